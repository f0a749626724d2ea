//! Generic QMP clients can discover Papervisor: query-commands and
//! query-qmp-schema list exactly what the dispatcher accepts, query-version
//! agrees with the greeting, and QEMU's own qmp-shell drives it.

use papervisor_tests::{kvm_usable, Vm};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

#[test]
fn the_schema_lists_exactly_the_commands_the_dispatcher_accepts() {
    if !kvm_usable("the_schema_lists_exactly_the_commands_the_dispatcher_accepts") {
        return;
    }
    let mut vm = Vm::start(&["--name", "vm-under-test"]);
    vm.boot();
    let replies = vm.qmp(&[
        "query-commands",
        "query-qmp-schema",
        "query-name",
        "query-kvm",
    ]);
    let mut listed: Vec<String> = replies[0]["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let schema = replies[1]["return"].as_array().unwrap();
    let mut in_schema: Vec<String> = schema
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    in_schema.sort();
    assert_eq!(listed, in_schema);
    for command in [
        "query-status",
        "device_add",
        "device_del",
        "stop",
        "cont",
        "quit",
    ] {
        assert!(listed.iter().any(|c| c == command), "{command} missing");
    }
    assert!(schema
        .iter()
        .any(|e| e["meta-type"] == "event" && e["name"] == "DEVICE_UNPLUG_GUEST_ERROR"));
    assert_eq!(replies[2]["return"], json!({"name": "vm-under-test"}));
    assert_eq!(
        replies[3]["return"],
        json!({"enabled": true, "present": true})
    );
    // Every listed command is dispatched: with an argument it does not take
    // it is refused as such, never as an unknown command (and nothing runs).
    for command in &listed {
        // device_add takes its driver's properties: one it lacks is refused.
        let arguments = match command.as_str() {
            "device_add" => r#"{"driver": "host-spapr-cpu-core", "bogus": 1}"#,
            _ => r#"{"bogus": 1}"#,
        };
        let reply = &vm.qmp(&[&format!("{command}={arguments}")])[0];
        assert_eq!(
            reply["error"]["class"], "GenericError",
            "{command}: {reply}"
        );
        assert!(
            reply["error"]["desc"].as_str().unwrap().contains("bogus"),
            "{command}: {reply}"
        );
    }
    // And nothing else is.
    for command in [
        "blockdev-snapshot-sync",
        "query-balloon",
        "migrate",
        "x-debug",
    ] {
        let reply = &vm.qmp(&[command])[0];
        assert_eq!(
            reply["error"]["class"], "CommandNotFound",
            "{command}: {reply}"
        );
    }
    assert_eq!(vm.qmp(&["query-status"])[0]["return"]["status"], "running");
}

#[test]
fn query_version_says_what_the_greeting_says() {
    if !kvm_usable("query_version_says_what_the_greeting_says") {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    let stream = UnixStream::connect(vm.qmp_socket()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    let mut next = |reader: &mut BufReader<UnixStream>| -> Value {
        line.clear();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let greeting = next(&mut reader);
    writer
        .write_all(b"{\"execute\": \"qmp_capabilities\"}\n{\"execute\": \"query-version\"}\n")
        .unwrap();
    assert_eq!(next(&mut reader), json!({"return": {}}));
    let version = next(&mut reader);
    assert_eq!(version["return"], greeting["QMP"]["version"]);
    assert!(version["return"]["package"]
        .as_str()
        .unwrap()
        .starts_with("papervisor "));
}

#[test]
fn qemus_qmp_shell_drives_it_from_a_pipe() {
    if !kvm_usable("qemus_qmp_shell_drives_it_from_a_pipe") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut shell = Command::new("qmp-shell")
        .arg(vm.qmp_socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qmp-shell (pip install qemu.qmp) is needed");
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"query-status\ndevice_add driver=host-spapr-cpu-core core-id=1 id=c1\n")
        .unwrap();
    let output = shell.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"status\": \"running\""), "{stdout}");
    assert!(stdout.contains("{\"return\": {}}"), "{stdout}");
    vm.console.expect_async(
        "dlpar: cpu add 0x10000001: ok",
        std::time::Duration::from_secs(60),
    );
}
