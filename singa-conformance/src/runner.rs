//! Runs one property's random cases with proptest, from a library rather than a `proptest!`
//! test, so that the properties can be `pub fn`s every backend's tests call.

use crate::Devices;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseResult, TestRunner};
use std::fmt::Debug;

/// Where failing seeds are saved and replayed from: `proptest-regressions/<module>.txt` beside
/// this crate's `src`, found from the `file!()` of the module defining the property.
const REGRESSIONS: FileFailurePersistence =
    FileFailurePersistence::SourceParallel("proptest-regressions");

/// Runs `test` on `cases` (scaled by `SINGA_CONFORMANCE_CASES`) values of `strategy`, after the
/// seeds saved for `source_file`. On a failure, panics with proptest's message (the shrunk,
/// minimal failing input and the error) and the device's name.
pub(crate) fn check<S>(
    property: &str,
    devices: &Devices,
    source_file: &'static str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases: scaled_cases(cases),
        source_file: Some(source_file),
        failure_persistence: Some(Box::new(REGRESSIONS)),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(failure) = runner.run(&strategy, test) {
        panic!(
            "{property} on {}: {failure}\n{runner}",
            devices.device().info().description
        );
    }
}

/// `cases` times the factor in `SINGA_CONFORMANCE_CASES` (1 when unset), at least 1.
fn scaled_cases(cases: u32) -> u32 {
    let Some(factor) = std::env::var_os("SINGA_CONFORMANCE_CASES") else {
        return cases;
    };
    let factor: f64 = factor
        .to_str()
        .and_then(|f| f.trim().parse().ok())
        .filter(|f: &f64| f.is_finite() && *f > 0.0)
        .unwrap_or_else(|| {
            panic!("SINGA_CONFORMANCE_CASES is {factor:?}, not a positive factor such as 0.25 or 4")
        });
    ((cases as f64 * factor).round() as u32).max(1)
}
