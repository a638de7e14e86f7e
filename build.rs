//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds
//! the migrations directories, and stable Rust cannot tell it to watch them.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
