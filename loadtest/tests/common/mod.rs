#![allow(dead_code)]
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

pub fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slimserve-loadtest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Run the loadtest binary; return its results.json.
pub fn run_loadtest(args: &[&str], out: &PathBuf) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("{stderr}");
    assert!(o.status.success(), "loadtest failed: {stderr}");
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results.json"))
        .expect("json")
}

pub fn f(v: &Value, path: &str) -> f64 {
    let mut x = v;
    for k in path.split('.') {
        x = &x[k];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}
