//! Nothing to link: this package holds the checks of `manifests/` and `e2e/` that run without a
//! cluster (`tests/manifests.rs`). The end-to-end runs themselves are shell scripts beside it.
