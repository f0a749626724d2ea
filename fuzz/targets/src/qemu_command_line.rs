//! `papervisor-qemu`'s command line: arguments (the input cut at NUL
//! bytes) turned into the core's. Beyond not panicking: the same line
//! gives the same answer, a refusal is one line, and what is accepted
//! gives the core options only (`--name value` pairs and flags).

/// The target.
pub fn fuzz(data: &[u8]) {
    let argv: Vec<String> = data
        .split(|byte| *byte == 0)
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    let first = qemu_frontend::translate(&argv);
    assert_eq!(first, qemu_frontend::translate(&argv), "not deterministic");
    match first {
        Ok(translation) => {
            if let Some(option) = translation.args.first() {
                assert!(option.starts_with("--"), "{option}");
            }
        }
        Err(refusal) => assert!(!refusal.contains('\n'), "{refusal}"),
    }
}
