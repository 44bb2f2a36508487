//! Every public property of the suite is one `device_tests!` runs: a property added to the
//! crate but not to the macro's list would otherwise never run on any backend.

use std::collections::BTreeSet;
use std::path::Path;

/// The names of the `pub fn`s taking `&Devices` in the crate's sources.
fn public_properties() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("pub fn ") else {
                continue;
            };
            if let Some((name, args)) = rest.split_once('(') {
                // `compare_convolution` takes more than the devices: a tool, not a property.
                if args.starts_with("devices: &Devices)") {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

#[test]
fn every_public_property_is_run_by_the_macro() {
    let listed: BTreeSet<String> = singa_conformance::PROPERTIES
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        listed.len(),
        singa_conformance::PROPERTIES.len(),
        "a property is listed twice"
    );
    assert_eq!(public_properties(), listed);
}

/// An unavailable backend's properties pass, having said why.
#[test]
fn unavailable_backends_skip() {
    if std::env::var_os("SINGA_CONFORMANCE_REQUIRE").is_some() {
        // Skipping is a failure there, on purpose.
        return;
    }
    let why = singa_conformance::Unavailable::new("this backend is not here (a test of skipping)");
    singa_conformance::run_or_skip("gemm_matches", Err(why), singa_conformance::gemm_matches);
}
