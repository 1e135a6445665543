//! A test whose prerequisite is missing (a program, a privilege) fails: it does not pass by
//! returning early, so a CI machine that lost one shows it. A machine that really lacks a
//! prerequisite opts out by naming it in `WALFERRY_TEST_ALLOW_MISSING` (comma-separated, e.g.
//! `WALFERRY_TEST_ALLOW_MISSING=tmpfs,postgresql`); the test then says it was skipped.
//!
//! Shared by the integration tests (as `common::prerequisite`) and by unit tests in `src/`
//! (included there with `#[path]`), so both tiers follow one rule and one variable.

/// The variable listing the prerequisites whose absence skips a test instead of failing it.
pub const ALLOW_MISSING_VAR: &str = "WALFERRY_TEST_ALLOW_MISSING";

/// Reports that prerequisite `name` is missing (`why` says what was found). Panics unless
/// `name` is listed in [`ALLOW_MISSING_VAR`]; then prints that the test is skipped and
/// returns, and the caller must return without testing anything.
pub fn missing(name: &str, why: &str) {
    let allowed = std::env::var(ALLOW_MISSING_VAR).unwrap_or_default();
    if allowed.split(',').any(|n| n.trim() == name) {
        eprintln!("SKIPPED: prerequisite `{name}` is missing ({why}); allowed by {ALLOW_MISSING_VAR}={allowed}");
        return;
    }
    panic!(
        "prerequisite `{name}` is missing: {why}\n\
         HINT: provide it; only on a machine that cannot have it, set \
         {ALLOW_MISSING_VAR}={name} to skip this test"
    );
}
