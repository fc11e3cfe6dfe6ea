//! Lets the binaries find libtorch at run time without LD_LIBRARY_PATH: an rpath to the
//! libtorch laid out by ops/setup-models.sh.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let dir = std::env::var("LIBTORCH").unwrap_or_else(|_| "third_party/libtorch".into());
    let lib = std::path::Path::new(&dir).join("lib");
    match lib.canonicalize() {
        Ok(abs) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", abs.display()),
        Err(_) => println!(
            "cargo:warning=libtorch not found at {}: run ./ops/setup-models.sh",
            lib.display()
        ),
    }
}
