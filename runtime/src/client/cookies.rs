//! The cookie jar of a [`TestClient`](super::TestClient) that has
//! [`with_cookies`](super::TestClient::with_cookies) on.
//!
//! `Set-Cookie` values are parsed by the `cookie` crate, which also reads
//! `Max-Age` and the `Expires` date formats browsers accept. The jar itself is
//! deliberately simple: one host, no paths, cookies keyed by name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::HeaderMap;
use axum::http::header::{self, HeaderValue};
use cookie::Cookie;
use cookie::time::OffsetDateTime;

/// A jar shared by a client, its clones and the requests they send.
pub(super) type SharedJar = Arc<Mutex<CookieJar>>;

/// Locks a shared jar. A panic elsewhere cannot leave the jar half-updated, so
/// a poisoned lock is recovered.
pub(super) fn lock(jar: &Mutex<CookieJar>) -> MutexGuard<'_, CookieJar> {
    jar.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The cookies a client keeps, by name.
#[derive(Clone, Debug, Default)]
pub(super) struct CookieJar {
    cookies: BTreeMap<String, StoredCookie>,
}

#[derive(Clone, Debug)]
struct StoredCookie {
    /// The value exactly as the server set it (quotes included, if any), which
    /// is what a browser sends back.
    value: String,
    /// When the cookie stops being sent: from `Max-Age` (which wins) or
    /// `Expires`. `None` for a session cookie.
    expires: Option<OffsetDateTime>,
}

impl StoredCookie {
    fn is_live(&self, now: OffsetDateTime) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

impl CookieJar {
    /// Applies every `Set-Cookie` header of a response.
    pub(super) fn store_all(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(header::SET_COOKIE) {
            if let Ok(value) = value.to_str() {
                self.store(value);
            }
        }
    }

    /// Applies one `Set-Cookie` header value. A value that does not parse (no
    /// `name=value`, an empty name) is ignored, as a browser ignores it. A
    /// cookie that is already expired (`Max-Age=0`, a negative `Max-Age`, an
    /// `Expires` date in the past) removes the cookie of that name.
    pub(super) fn store(&mut self, set_cookie: &str) {
        let Ok(cookie) = Cookie::parse(set_cookie) else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        let expires = match (cookie.max_age(), cookie.expires_datetime()) {
            // A `Max-Age` too large to add is as good as never.
            (Some(max_age), _) => now.checked_add(max_age),
            (None, expires) => expires,
        };
        let stored = StoredCookie {
            value: cookie.value().to_owned(),
            expires,
        };
        if stored.is_live(now) {
            self.cookies.insert(cookie.name().to_owned(), stored);
        } else {
            self.cookies.remove(cookie.name());
        }
    }

    /// Puts a session cookie into the jar, as if the server had set it.
    pub(super) fn insert(&mut self, name: String, value: String) {
        self.cookies.insert(
            name,
            StoredCookie {
                value,
                expires: None,
            },
        );
    }

    /// The value of a cookie that has not expired.
    pub(super) fn get(&self, name: &str) -> Option<String> {
        let now = OffsetDateTime::now_utc();
        self.cookies
            .get(name)
            .filter(|cookie| cookie.is_live(now))
            .map(|cookie| cookie.value.clone())
    }

    /// Empties the jar.
    pub(super) fn clear(&mut self) {
        self.cookies.clear();
    }

    /// The `Cookie` header for the jar's live cookies, if it holds any. Expired
    /// cookies are dropped.
    pub(super) fn header_value(&mut self) -> Option<HeaderValue> {
        let now = OffsetDateTime::now_utc();
        self.cookies.retain(|_, cookie| cookie.is_live(now));
        if self.cookies.is_empty() {
            return None;
        }
        let joined = self
            .cookies
            .iter()
            .map(|(name, cookie)| format!("{name}={}", cookie.value))
            .collect::<Vec<_>>()
            .join("; ");
        HeaderValue::from_str(&joined).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(jar: &mut CookieJar) -> Option<String> {
        jar.header_value()
            .map(|value| value.to_str().unwrap().to_owned())
    }

    #[test]
    fn set_cookie_attributes_are_applied() {
        let mut jar = CookieJar::default();
        jar.store("a=1; Max-Age=60");
        jar.store("b = 2 ; expires=Fri, 01 Jan 2100 00:00:00 GMT");
        jar.store("c=3; Expires=Sunday, 06-Nov-94 08:49:37 GMT");
        jar.store("d=4; Expires=Sun Nov  6 08:49:37 1994");
        jar.store("garbage");
        jar.store("=nameless");
        assert_eq!(header(&mut jar).as_deref(), Some("a=1; b=2"));
        jar.store("a=; Max-Age=-1");
        // Max-Age wins over Expires.
        jar.store("b=x; Max-Age=0; Expires=Fri, 01 Jan 2100 00:00:00 GMT");
        assert_eq!(header(&mut jar), None);
    }

    #[test]
    fn values_are_sent_back_as_set() {
        let mut jar = CookieJar::default();
        jar.store("quoted=\"a b\"; Path=/; HttpOnly; Secure; SameSite=Lax");
        jar.store("encoded=a%20b");
        jar.store("huge=1; Max-Age=99999999999999999999");
        assert_eq!(
            header(&mut jar).as_deref(),
            Some("encoded=a%20b; huge=1; quoted=\"a b\"")
        );
        assert_eq!(jar.get("quoted").as_deref(), Some("\"a b\""));
    }

    #[test]
    fn cookies_expire_while_in_the_jar() {
        let mut jar = CookieJar::default();
        jar.store("soon=1; Max-Age=60");
        jar.cookies.get_mut("soon").unwrap().expires =
            Some(OffsetDateTime::now_utc() - cookie::time::Duration::seconds(1));
        assert_eq!(jar.get("soon"), None);
        assert_eq!(header(&mut jar), None);
        assert!(jar.cookies.is_empty());
    }
}
