//! `fedmesh demo` end to end, and interrupted.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use crate::*;

/// The processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmd| String::from_utf8_lossy(cmd).contains(needle))
        .count()
}

fn data_dir_of(first_line: &str) -> String {
    first_line
        .rsplit(' ')
        .next()
        .expect("the demo names its directory")
        .to_string()
}

#[test]
fn the_demo_runs_every_step_and_cleans_up() {
    let out = Command::new(bin()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with('[') && l.contains(" ... ok ("))
        .count();
    assert_eq!(passed, 8, "{stdout}");
    // Every node served its status page.
    let pages = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("node ") && l.contains(": http://127.0.0.1:"))
        .count();
    assert_eq!(pages, 5, "{stdout}");
    let dir = data_dir_of(stdout.lines().next().unwrap());
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    assert_eq!(processes_mentioning(&dir), 0, "node processes left behind");
}

#[test]
fn an_interrupted_demo_leaves_no_process_or_directory() {
    let mut child = Command::new(bin())
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let dir = data_dir_of(&lines.next().unwrap().unwrap());
    // Once the nodes run (step 3 has started), interrupt it as Ctrl-C would.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("[2/8]") {
            break;
        }
    }
    assert!(
        processes_mentioning(&dir) > 0,
        "the nodes should be running"
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(!exit.success());
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    assert_eq!(processes_mentioning(&dir), 0, "node processes left behind");
}
