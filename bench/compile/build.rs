//! Generates the two files of the compile-time benchmark: the same tests,
//! once under `#[db_test]` and once under `#[tokio::test]`.
//! `BENCH_COMPILE_N` (default 500) sets how many.

fn main() {
    println!("cargo:rerun-if-env-changed=BENCH_COMPILE_N");
    println!("cargo:rerun-if-changed=build.rs");
    let n: usize = std::env::var("BENCH_COMPILE_N")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(500);
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut db_test = String::new();
    let mut tokio_test = String::new();
    for i in 0..n {
        db_test.push_str(&format!(
            "#[db_test(migrations = \"../../example-app/migrations\")]\n\
             async fn t{i:04}(db: TestDb) {{\n    workload!(&db, {i});\n}}\n"
        ));
        tokio_test.push_str(&format!(
            "#[tokio::test]\n\
             async fn t{i:04}() {{\n    let pool = fresh_pool().await;\n    workload!(&pool, {i});\n}}\n"
        ));
    }
    let out = std::path::Path::new(&out);
    std::fs::write(out.join("db_test_500.rs"), db_test).expect("write db_test_500.rs");
    std::fs::write(out.join("tokio_test_500.rs"), tokio_test).expect("write tokio_test_500.rs");
}
