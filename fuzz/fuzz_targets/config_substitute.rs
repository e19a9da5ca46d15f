#![no_main]
//! `${VAR}` substitution in the config file.

use libfuzzer_sys::fuzz_target;
use palisade_config::substitute_env;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Variables whose names start with X are unset.
    let lookup = |name: &str| (!name.starts_with('X')).then(|| format!("<{name}>"));
    match substitute_env(text, lookup) {
        Ok(out) => {
            assert!(!out.contains("${"), "a reference survived: {out:?}");
            if !text.contains("${") {
                assert_eq!(out, text);
            }
        }
        Err(e) => assert!(text.contains("${"), "{e} for a text without references"),
    }
    // Substituting each reference by itself gives the text back.
    if let Ok(same) = substitute_env(text, |name| Some(format!("${{{name}}}"))) {
        assert_eq!(same, text);
    }
});
