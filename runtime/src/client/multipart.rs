//! [`MultipartForm`], a `multipart/form-data` request body (RFC 7578), as a
//! browser sends a form with file inputs.

use std::fmt;

use axum::body::Bytes;

/// A `multipart/form-data` body: text fields and file parts, sent in the
/// order they were added. Send it with
/// [`TestRequest::multipart`](super::TestRequest::multipart), which also sets
/// `Content-Type: multipart/form-data; boundary=...`.
///
/// ```
/// use axum::{Router, extract::Multipart, routing::post};
/// use db_test::{MultipartForm, TestClient};
///
/// async fn upload(mut form: Multipart) -> String {
///     let mut seen = Vec::new();
///     while let Some(field) = form.next_field().await.unwrap() {
///         let name = field.name().unwrap().to_owned();
///         let file = field.file_name().map(str::to_owned);
///         let bytes = field.bytes().await.unwrap();
///         seen.push(format!("{name}={file:?}:{}", bytes.len()));
///     }
///     seen.join(",")
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = TestClient::new(Router::new().route("/upload", post(upload)));
/// let form = MultipartForm::new()
///     .text("title", "Holiday")
///     .file("photo", "beach.png", "image/png", vec![0x89, b'P', b'N', b'G']);
/// client
///     .post("/upload")
///     .multipart(form)
///     .await
///     .assert_status(200)
///     .assert_text("title=None:7,photo=Some(\"beach.png\"):4");
/// # }
/// ```
///
/// Field names and file names are written the way browsers write them: a
/// `"` becomes `%22`, a line feed `%0A` and a carriage return `%0D`. The
/// boundary is chosen so that it occurs in no part.
#[derive(Clone, Default)]
pub struct MultipartForm {
    parts: Vec<Part>,
}

#[derive(Clone)]
struct Part {
    name: String,
    /// The file name and content type of a file part; `None` for a text field.
    file: Option<(String, String)>,
    data: Bytes,
}

impl MultipartForm {
    /// An empty form.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a text field, as an `<input name=..>` sends it: no file name and
    /// no content type of its own.
    pub fn text(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.parts.push(Part {
            name: name.into(),
            file: None,
            data: Bytes::from(value.into()),
        });
        self
    }

    /// Adds a file part, as an `<input type=file name=..>` sends it: with a
    /// file name and a content type such as `"image/png"` or
    /// `"application/octet-stream"`.
    ///
    /// # Panics
    ///
    /// If `content_type` contains a line break, which would end the part's
    /// headers early.
    #[track_caller]
    pub fn file(
        mut self,
        name: impl Into<String>,
        file_name: impl Into<String>,
        content_type: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Self {
        let content_type = content_type.into();
        assert!(
            !content_type.contains(['\r', '\n']),
            "invalid content type {content_type:?} for a multipart file part: it contains a line break"
        );
        self.parts.push(Part {
            name: name.into(),
            file: Some((file_name.into(), content_type)),
            data: data.into(),
        });
        self
    }

    /// The number of parts.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether the form has no parts.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The encoded body and the `Content-Type` that announces its boundary.
    pub(super) fn encode(&self) -> (String, Bytes) {
        let boundary = self.boundary();
        let mut body = Vec::new();
        for part in &self.parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            body.extend_from_slice(b"Content-Disposition: form-data; name=\"");
            body.extend_from_slice(escape(&part.name).as_bytes());
            body.push(b'"');
            if let Some((file_name, content_type)) = &part.file {
                body.extend_from_slice(b"; filename=\"");
                body.extend_from_slice(escape(file_name).as_bytes());
                body.extend_from_slice(b"\"\r\nContent-Type: ");
                body.extend_from_slice(content_type.as_bytes());
            }
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(&part.data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (
            format!("multipart/form-data; boundary={boundary}"),
            Bytes::from(body),
        )
    }

    /// A boundary that occurs in no part's content. It does not depend on
    /// chance, so a request is the same from run to run.
    fn boundary(&self) -> String {
        (0u64..)
            .map(|n| format!("db-test-boundary-{n:08x}"))
            .find(|boundary| {
                let boundary = boundary.as_bytes();
                self.parts.iter().all(|part| {
                    !contains(&part.data, boundary)
                        && !contains(part.name.as_bytes(), boundary)
                        && part.file.as_ref().is_none_or(|(file_name, content_type)| {
                            !contains(file_name.as_bytes(), boundary)
                                && !contains(content_type.as_bytes(), boundary)
                        })
                })
            })
            .expect("some boundary does not occur in a finite form")
    }
}

impl fmt::Debug for MultipartForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for part in &self.parts {
            match &part.file {
                None => list.entry(&format_args!(
                    "{:?}: {:?}",
                    part.name,
                    String::from_utf8_lossy(&part.data)
                )),
                Some((file_name, content_type)) => list.entry(&format_args!(
                    "{:?}: file {file_name:?} ({content_type}, {} bytes)",
                    part.name,
                    part.data.len()
                )),
            };
        }
        list.finish()
    }
}

/// A name or file name inside a quoted `Content-Disposition` parameter, as
/// the HTML standard encodes it.
fn escape(name: &str) -> String {
    name.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_follows_rfc_7578() {
        let form = MultipartForm::new().text("title", "Hello").file(
            "doc",
            "a.txt",
            "text/plain",
            "line 1\r\nline 2",
        );
        let (content_type, body) = form.encode();
        assert_eq!(
            content_type,
            "multipart/form-data; boundary=db-test-boundary-00000000"
        );
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "--db-test-boundary-00000000\r\n\
             Content-Disposition: form-data; name=\"title\"\r\n\
             \r\n\
             Hello\r\n\
             --db-test-boundary-00000000\r\n\
             Content-Disposition: form-data; name=\"doc\"; filename=\"a.txt\"\r\n\
             Content-Type: text/plain\r\n\
             \r\n\
             line 1\r\nline 2\r\n\
             --db-test-boundary-00000000--\r\n"
        );
        assert_eq!(form.len(), 2);
        assert!(MultipartForm::new().is_empty());
    }

    #[test]
    fn the_boundary_avoids_the_content() {
        let form = MultipartForm::new().text(
            "trap",
            "--db-test-boundary-00000000 and db-test-boundary-00000001",
        );
        let (content_type, _) = form.encode();
        assert!(content_type.ends_with("boundary=db-test-boundary-00000002"));
    }

    #[test]
    fn names_are_escaped() {
        let form = MultipartForm::new().file("a\"b", "x\r\ny.txt", "text/plain", "");
        let (_, body) = form.encode();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(
            body.contains("name=\"a%22b\"; filename=\"x%0D%0Ay.txt\""),
            "{body}"
        );
    }

    #[test]
    #[should_panic(expected = "invalid content type \"text/plain\\r\\nX-Evil: 1\"")]
    fn line_breaks_in_a_content_type_are_refused() {
        let _ = MultipartForm::new().file("f", "f.txt", "text/plain\r\nX-Evil: 1", "");
    }

    #[test]
    fn debug_shows_the_parts() {
        let form = MultipartForm::new().text("a", "1").file(
            "f",
            "f.bin",
            "application/octet-stream",
            vec![0u8; 3],
        );
        assert_eq!(
            format!("{form:?}"),
            "[\"a\": \"1\", \"f\": file \"f.bin\" (application/octet-stream, 3 bytes)]"
        );
    }
}
