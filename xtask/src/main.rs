//! `cargo xtask`: the project's automation, in Rust so that it runs wherever cargo does.
//!
//! `cargo xtask ci` is the whole check suite, the same command `.ci/run` runs. If it
//! passes locally, CI passes. See `cargo xtask help`.

mod deps;
mod licenses;

use std::{
    env,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Instant,
};

const HELP: &str = "\
cargo xtask <command>

Commands:
  ci [--keep-going]          every check CI runs, in order (fmt, clippy, test, the
                             fast-kem backend's clippy and tests, bench build, doc,
                             publish dry run, deps, both simulators, licences, fuzz
                             build and smoke run)
  deps                       check the crate stack: no crate depends on one above it
  licenses                   check every dependency's licence and source (crates.io)
  publish-dry-run            cargo publish --dry-run of every library crate, in order
  test                       cargo test --workspace --locked
  fast-kem                   clippy and tests with fed-crypto's libcrux ML-KEM backend
  bench [CRATE..] [-- ARGS]  criterion benches (CRATE: crypto, crdt, ...; default all),
                             ARGS passed to criterion (e.g. --measurement-time 5)
  fuzz [--seconds N] [T..]   build the fuzz targets and run each (or the named ones)
                             for N seconds (default 60); needs cargo-fuzz
  sim [--seeds N | --soak] [--scenario NAME] [--seed S]
                             the PBFT Byzantine simulator: N seeds per scenario
                             (default 100; --soak: 10 000, the soak of
                             docs/TESTING.md), or replay one scenario and seed,
                             in the `sim` profile (release with debug checks)
  sim mesh [--full]          the node simulator: 200 fed-mesh cores, `sim` profile
                             (--full: the fan-out x hops sweep of BENCHMARKS.md)
  help                       this text

Environment:
  CI=true                    a missing cargo-fuzz fails instead of skipping
  FED_PROPTEST_CASES=N       proptest cases per property (default: each suite's CI size)
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match cmd {
        "ci" => ci(rest.iter().any(|a| a == "--keep-going")),
        "deps" => deps::check_workspace(&root()).map_err(|e| vec![e]),
        "licenses" => licenses::check_workspace(&root()).map_err(|e| vec![e]),
        "publish-dry-run" => publish_dry_run().map_err(|e| vec![e]),
        "test" => run_step(&test_step()).map_err(|e| vec![e]),
        "fast-kem" => fast_kem().map_err(|e| vec![e]),
        "bench" => bench(rest).map_err(|e| vec![e]),
        "fuzz" => fuzz(rest).map_err(|e| vec![e]),
        "sim" => sim(rest).map_err(|e| vec![e]),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(vec![format!("unknown command `{other}`\n\n{HELP}")]),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(errors) => {
            eprintln!();
            for e in &errors {
                eprintln!("xtask: FAILED: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// One external command of a check, with the message shown when it fails.
struct Step {
    name: &'static str,
    program: String,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    dir: Option<PathBuf>,
    output: Output,
}

/// What a step does with the output of its command.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Shown as it comes.
    Shown,
    /// Shown as it comes, and the failing tests' sections of libtest's output
    /// are repeated in the step's error, so that they end the run's log.
    ShownWithFailures,
    /// Kept in a log file; only its last lines are shown (a few on success,
    /// more on failure). For chatty tools such as libFuzzer.
    Tail,
}

/// Lines of failing tests' output repeated in a step's error, at most.
const FAILURE_DIGEST_LINES: usize = 120;

impl Step {
    fn cargo(name: &'static str, args: &[&str]) -> Self {
        Self {
            name,
            program: env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: Vec::new(),
            dir: None,
            output: Output::Shown,
        }
    }

    fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    fn env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.envs.push((key, value.into()));
        self
    }

    fn dir(mut self, dir: PathBuf) -> Self {
        self.dir = Some(dir);
        self
    }
}

fn run_step(step: &Step) -> Result<(), String> {
    eprintln!(
        "\n==> [{}] {} {}",
        step.name,
        step.program,
        step.args.join(" ")
    );
    let start = Instant::now();
    let mut cmd = Command::new(&step.program);
    cmd.args(&step.args)
        .current_dir(step.dir.clone().unwrap_or_else(root));
    for (k, v) in &step.envs {
        cmd.env(k, v);
    }
    let could_not_start =
        |e: std::io::Error| format!("[{}] could not start `{}`: {e}", step.name, step.program);
    let (status, detail) = match step.output {
        Output::Shown => (cmd.status().map_err(could_not_start)?, String::new()),
        Output::ShownWithFailures => {
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(could_not_start)?;
            let digest = Arc::new(Mutex::new(FailureDigest::default()));
            let readers: Vec<_> = [
                child
                    .stdout
                    .take()
                    .map(|r| Box::new(r) as Box<dyn Read + Send>),
                child
                    .stderr
                    .take()
                    .map(|r| Box::new(r) as Box<dyn Read + Send>),
            ]
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                let digest = Arc::clone(&digest);
                thread::spawn(move || tee(r, i == 0, &digest))
            })
            .collect();
            let status = child.wait().map_err(could_not_start)?;
            for r in readers {
                let _ = r.join();
            }
            let digest = digest.lock().map(|d| d.render()).unwrap_or_default();
            (status, digest)
        }
        Output::Tail => {
            let dir = root().join("target").join("xtask-logs");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let path = dir.join(format!("{}.log", step.name));
            let log = std::fs::File::create(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            let log2 = log
                .try_clone()
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            let status = cmd
                .stdout(log)
                .stderr(log2)
                .status()
                .map_err(could_not_start)?;
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let keep = if status.success() { 3 } else { 80 };
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("({} lines in {})", lines.len(), path.display());
            for line in &lines[lines.len().saturating_sub(keep)..] {
                eprintln!("{line}");
            }
            (status, String::new())
        }
    };
    eprintln!(
        "<== [{}] {} in {:.0?}",
        step.name,
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "[{}] `{} {}` exited with {status}{detail}",
            step.name,
            step.program,
            step.args.join(" ")
        ))
    }
}

/// Copies a child's output to ours line by line, noting what libtest says of
/// failing tests.
fn tee(from: Box<dyn Read + Send>, stdout: bool, digest: &Mutex<FailureDigest>) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        if stdout {
            let _ = writeln!(std::io::stdout(), "{line}");
        } else {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        if let Ok(mut d) = digest.lock() {
            d.see(&line);
        }
    }
}

/// The failing tests of a libtest run: their names and the `failures:` sections
/// (each failing test's captured output and panic message).
#[derive(Default)]
struct FailureDigest {
    in_failures: bool,
    lines: Vec<String>,
    dropped: usize,
}

impl FailureDigest {
    fn see(&mut self, line: &str) {
        let t = line.trim_end();
        if t == "failures:" {
            self.in_failures = true;
        } else if t.starts_with("test result:") {
            self.in_failures = false;
        }
        let keep = self.in_failures
            || (t.starts_with("test ") && t.ends_with("FAILED"))
            || t.starts_with("error: test failed");
        if keep {
            if self.lines.len() < FAILURE_DIGEST_LINES {
                self.lines.push(t.to_string());
            } else {
                self.dropped += 1;
            }
        }
    }

    fn render(&self) -> String {
        if self.lines.is_empty() {
            return String::new();
        }
        let mut out = String::from("\nwhat the failing tests printed:\n");
        for l in &self.lines {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
        if self.dropped > 0 {
            out.push_str(&format!("  ... and {} lines more\n", self.dropped));
        }
        out
    }
}

/// The other ML-KEM backend (fed-crypto's `fast-kem` feature): clippy on
/// fed-crypto, and the tests of every crate that runs X-Wing (the KEM's vectors
/// and the backends' interoperation, handshakes, onion packets).
fn fast_kem() -> Result<(), String> {
    run_step(&Step::cargo(
        "fast-kem-clippy",
        &[
            "clippy",
            "--locked",
            "-p",
            "fed-crypto",
            "--all-targets",
            "--features",
            "fast-kem",
            "--",
            "-D",
            "warnings",
        ],
    ))?;
    run_step(
        &Step::cargo(
            "fast-kem-doc",
            &[
                "doc",
                "--locked",
                "--no-deps",
                "-p",
                "fed-crypto",
                "--features",
                "fast-kem",
            ],
        )
        .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run_step(
        &Step::cargo(
            "fast-kem-test",
            &[
                "test",
                "--locked",
                "-p",
                "fed-crypto",
                "-p",
                "fed-handshake",
                "-p",
                "fed-onion",
                "--features",
                "fed-crypto/fast-kem",
            ],
        )
        .output(Output::ShownWithFailures),
    )
}

/// `cargo test --workspace` (`cargo xtask test`), whose failures end the run's
/// log. The node simulator runs on a small federation: 60 nodes unoptimised
/// took two minutes.
fn test_step() -> Step {
    Step::cargo("test", &["test", "--workspace", "--locked"])
        .env("FED_SIM_NODES", DEBUG_SIM_NODES.to_string())
        .output(Output::ShownWithFailures)
}

/// Nodes of the node simulator's federations in `cargo xtask test`.
const DEBUG_SIM_NODES: u32 = 24;

/// `ci`'s test step: the workspace's tests without the simulators' many-seed
/// runs, which the `sims` step makes in the `sim` profile (release speed, the
/// workspace's debug assertions and overflow checks on). The node simulator is
/// left out; fed-pbft's runs one seed per scenario, so that its test binary is
/// still built and run in debug.
fn ci_test_step() -> Step {
    let mut step = test_step().env("FED_SIM_SEEDS", "1");
    step.args
        .extend(["--exclude".to_string(), "fed-mesh-sim".to_string()]);
    step
}

fn has_cargo_subcommand(name: &str) -> bool {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([name, "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One step of `ci`.
type CheckFn = Box<dyn Fn() -> Result<(), String>>;

/// Seconds each fuzz target runs during `ci`.
const CI_FUZZ_SECONDS: u32 = 5;

fn ci(keep_going: bool) -> Result<(), Vec<String>> {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut check = |name: &str, result: Result<(), String>| -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                eprintln!("xtask: step {name} failed: {e}");
                failures.push(e);
                keep_going
            }
        }
    };

    let steps: Vec<(&str, CheckFn)> = vec![
        (
            "fmt",
            Box::new(|| run_step(&Step::cargo("fmt", &["fmt", "--all", "--", "--check"]))),
        ),
        (
            "clippy",
            Box::new(|| {
                run_step(&Step::cargo(
                    "clippy",
                    &[
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--locked",
                        "--",
                        "-D",
                        "warnings",
                    ],
                ))
            }),
        ),
        ("test", Box::new(|| run_step(&ci_test_step()))),
        ("fast-kem", Box::new(fast_kem)),
        (
            "bench-build",
            Box::new(|| {
                run_step(&Step::cargo(
                    "bench-build",
                    &["test", "--workspace", "--benches", "--locked", "--no-run"],
                ))
            }),
        ),
        (
            "doc",
            Box::new(|| {
                run_step(
                    &Step::cargo("doc", &["doc", "--workspace", "--no-deps", "--locked"])
                        // docs.rs's setting: `docsrs` is set for the crates' docs.
                        .env("RUSTDOCFLAGS", "-D warnings --cfg docsrs"),
                )
            }),
        ),
        ("publish-dry-run", Box::new(publish_dry_run)),
        ("deps", Box::new(|| deps::check_workspace(&root()))),
        ("sims", Box::new(ci_sims)),
        ("licenses", Box::new(|| licenses::check_workspace(&root()))),
        ("fuzz", Box::new(|| fuzz_run(&[], CI_FUZZ_SECONDS))),
    ];
    for (name, step) in steps {
        if !check(name, step()) {
            break;
        }
    }
    eprintln!("\nxtask ci: finished in {:.0?}", started.elapsed());
    if failures.is_empty() {
        eprintln!("xtask ci: all steps passed");
        Ok(())
    } else {
        Err(failures)
    }
}

/// `cargo publish --dry-run` of every library crate, in dependency order: each
/// is packaged and built from its package alone, against its siblings'
/// packages (cargo resolves unpublished workspace members through a local
/// registry of the packages it just made). The binary, the node simulator and
/// xtask are not published.
fn publish_dry_run() -> Result<(), String> {
    // Cargo unpacks the packages of its temporary registry under
    // `$CARGO_HOME/registry/src/-<hash>/` and reuses an unpacked copy of the same
    // name and version: after a change, a second run would build against the
    // first run's sources. Remove our crates' copies first.
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(src) = cargo_home.map(|h| h.join("registry").join("src"))
        && let Ok(dirs) = std::fs::read_dir(&src)
    {
        for dir in dirs.flatten() {
            if !dir.file_name().to_string_lossy().starts_with('-') {
                continue; // a real registry's sources
            }
            for krate in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = krate.file_name().to_string_lossy().into_owned();
                if name.starts_with("fed-") {
                    std::fs::remove_dir_all(krate.path())
                        .map_err(|e| format!("{}: {e}", krate.path().display()))?;
                }
            }
        }
    }
    // Cargo also never rebuilds a registry crate it has built (registry
    // sources are immutable), and the temporary registry's crates keep their
    // name and version across changes: drop our crates' fingerprints so that
    // they are rebuilt from the packages just made.
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let fingerprints = target.join("debug").join(".fingerprint");
    if let Ok(dirs) = std::fs::read_dir(&fingerprints) {
        for dir in dirs.flatten() {
            if dir.file_name().to_string_lossy().starts_with("fed-") {
                std::fs::remove_dir_all(dir.path())
                    .map_err(|e| format!("{}: {e}", dir.path().display()))?;
            }
        }
    }
    run_step(&Step::cargo(
        "publish-dry-run",
        &[
            "publish",
            "--workspace",
            "--exclude",
            "fedmesh",
            "--exclude",
            "xtask",
            "--exclude",
            "fed-mesh-sim",
            "--dry-run",
            "--locked",
            // A CI checkout may hold files the tests wrote; nothing is uploaded.
            "--allow-dirty",
        ],
    ))
}

fn missing_tool(tool: &str, install: &str) -> Result<(), String> {
    if in_ci() {
        Err(format!(
            "{tool} is not installed (CI=true requires it): {install}"
        ))
    } else {
        eprintln!(
            "\nxtask: warning: {tool} is not installed; skipping its step ({install}). CI runs it."
        );
        Ok(())
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let cargo_args = bench_args(args);
    let cargo_args: Vec<&str> = cargo_args.iter().map(String::as_str).collect();
    run_step(&Step::cargo("bench", &cargo_args))
}

/// `cargo bench` arguments for `xtask bench [CRATE..] [-- CRITERION ARGS]`: only the
/// bench targets (criterion's harness), since the libtest harness of unit tests
/// refuses criterion's options.
fn bench_args(args: &[String]) -> Vec<String> {
    let (crates, criterion_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut cargo_args = vec!["bench".to_string(), "--benches".to_string()];
    if crates.is_empty() {
        cargo_args.push("--workspace".into());
    }
    for c in crates {
        cargo_args.push("-p".into());
        cargo_args.push(if c.starts_with("fed-") {
            c.clone()
        } else {
            format!("fed-{c}")
        });
    }
    if !criterion_args.is_empty() {
        cargo_args.push("--".into());
        cargo_args.extend(criterion_args.iter().cloned());
    }
    cargo_args
}

/// Seeds per scenario that `ci` runs in the `sim` profile (its debug `test`
/// step runs one).
const CI_SIM_SEEDS: u32 = 32;

/// Seeds per scenario of `sim --soak` (docs/TESTING.md records its runs).
const SOAK_SIM_SEEDS: u32 = 10_000;

fn sim(args: &[String]) -> Result<(), String> {
    if args.first().is_some_and(|a| a == "mesh") {
        return mesh_sim_run(args.iter().any(|a| a == "--full"));
    }
    let mut seeds = 100;
    let mut scenario = None;
    let mut seed = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} takes a value"));
        match a.as_str() {
            "--seeds" => {
                seeds = value()?
                    .parse()
                    .map_err(|_| "--seeds takes a whole number")?
            }
            "--soak" => seeds = SOAK_SIM_SEEDS,
            "--scenario" => scenario = Some(value()?),
            "--seed" => seed = Some(value()?),
            other => return Err(format!("unknown sim option `{other}`")),
        }
    }
    sim_run(seeds, scenario, seed)
}

/// Runs the node simulator (`crates/fed-mesh-sim`: fed-mesh's sans-IO core
/// only, so the release build skips the transports) with 200 nodes; `full`
/// also sweeps fan-out and hops and prints the tables of docs/BENCHMARKS.md.
fn mesh_sim_run(full: bool) -> Result<(), String> {
    let mut step = Step::cargo("mesh-sim", &sim_test_args(&["fed-mesh-sim"]))
        .env("FED_SIM_NODES", MESH_SIM_NODES.to_string())
        .output(Output::ShownWithFailures);
    if full {
        step = step.env("FED_SIM_FULL", "1").env("FED_SIM_REPORT", "1");
    }
    run_step(&step)
}

/// Both simulators in the `sim` profile (release, with the workspace's debug
/// assertions and overflow checks), as `ci` runs them: fed-pbft's with
/// [`CI_SIM_SEEDS`] seeds per scenario and the node simulator with 200 nodes.
/// One cargo invocation, so that their common dependencies are built with one
/// feature set (two invocations resolve features per package and built many
/// of them twice).
fn ci_sims() -> Result<(), String> {
    run_step(
        &Step::cargo("sims", &sim_test_args(&["fed-pbft", "fed-mesh-sim"]))
            .env("FED_SIM_SEEDS", CI_SIM_SEEDS.to_string())
            .env("FED_SIM_NODES", MESH_SIM_NODES.to_string())
            .output(Output::ShownWithFailures),
    )
}

/// `cargo test` of the `sim` test target of `packages` in the `sim` profile,
/// its output shown, on two test threads.
fn sim_test_args<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["test", "--profile", "sim", "--locked"];
    for p in packages {
        args.extend(["-p", p]);
    }
    args.extend(["--test", "sim", "--", "--nocapture", "--test-threads", "2"]);
    args
}

/// Nodes of the node simulator's federations in release runs.
const MESH_SIM_NODES: u32 = 200;

/// Runs fed-pbft's simulator in the `sim` profile (signatures are slow in debug).
fn sim_run(seeds: u32, scenario: Option<String>, seed: Option<String>) -> Result<(), String> {
    let mut step = Step::cargo(
        "sim",
        &[
            "test",
            "--profile",
            "sim",
            "--locked",
            "-p",
            "fed-pbft",
            "--test",
            "sim",
            "--",
            "--nocapture",
        ],
    )
    .env("FED_SIM_SEEDS", seeds.to_string())
    .output(Output::ShownWithFailures);
    if let Some(s) = scenario {
        step = step.env("FED_SIM_SCENARIO", s);
    }
    if let Some(s) = seed {
        step = step.env("FED_SIM_SEED", s);
    }
    run_step(&step)
}

fn fuzz(args: &[String]) -> Result<(), String> {
    let mut seconds = 60;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a whole number")?;
            }
            "--smoke" => seconds = CI_FUZZ_SECONDS,
            t => targets.push(t.to_string()),
        }
    }
    fuzz_run(&targets, seconds)
}

/// Builds every fuzz target with cargo-fuzz and runs the chosen ones (all by default)
/// for `seconds` each. Crashes fail the step and leave their input in
/// `fuzz/artifacts/<target>/`.
fn fuzz_run(targets: &[String], seconds: u32) -> Result<(), String> {
    if !has_cargo_subcommand("fuzz") {
        return missing_tool("cargo-fuzz", "cargo install --locked cargo-fuzz");
    }
    let fuzz_dir = root().join("fuzz");
    // The toolchain here is stable; cargo-fuzz passes nightly-only flags, which
    // RUSTC_BOOTSTRAP=1 unlocks for this build only. `-s none`: every fuzzed crate
    // forbids unsafe code, so AddressSanitizer would find nothing the Rust checks miss.
    let fuzz_cmd = |name: &'static str, args: Vec<String>| {
        let mut s = Step::cargo(name, &[])
            .env("RUSTC_BOOTSTRAP", "1")
            .dir(root());
        s.args = args;
        s
    };
    let base = [
        "fuzz".to_string(),
        "build".into(),
        "-s".into(),
        "none".into(),
        "--fuzz-dir".into(),
        fuzz_dir.display().to_string(),
    ];
    run_step(&fuzz_cmd("fuzz-build", base.to_vec()))?;
    let all = fuzz_targets(&fuzz_dir)?;
    let chosen: Vec<String> = if targets.is_empty() {
        all
    } else {
        targets.to_vec()
    };
    for t in chosen {
        let corpus = fuzz_dir.join("corpus").join(&t);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        let seeds = fuzz_dir.join("seeds").join(&t);
        let mut args = vec![
            "fuzz".to_string(),
            "run".into(),
            "-s".into(),
            "none".into(),
            "--fuzz-dir".into(),
            fuzz_dir.display().to_string(),
            t.clone(),
            corpus.display().to_string(),
        ];
        if seeds.is_dir() {
            args.push(seeds.display().to_string());
        }
        args.extend([
            "--".into(),
            format!("-max_total_time={seconds}"),
            "-max_len=65536".into(),
        ]);
        run_step(&fuzz_cmd("fuzz-run", args).output(Output::Tail))?;
    }
    Ok(())
}

fn fuzz_targets(fuzz_dir: &Path) -> Result<Vec<String>, String> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::{FailureDigest, bench_args};

    #[test]
    fn the_digest_keeps_failing_tests_and_their_output_only() {
        let log = "\
running 3 tests
test a::passes ... ok
test a::breaks ... FAILED
test a::also_passes ... ok

failures:

---- a::breaks stdout ----

thread 'a::breaks' panicked at src/a.rs:3:5:
seed 7: two runs differ

failures:
    a::breaks

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
error: test failed, to rerun pass `--test net`
";
        let mut d = FailureDigest::default();
        log.lines().for_each(|l| d.see(l));
        let text = d.render();
        assert!(text.contains("test a::breaks ... FAILED"), "{text}");
        assert!(text.contains("seed 7: two runs differ"), "{text}");
        assert!(text.contains("--test net"), "{text}");
        assert!(!text.contains("passes"), "{text}");
        let mut quiet = FailureDigest::default();
        "running 1 test\ntest a ... ok\ntest result: ok. 1 passed"
            .lines()
            .for_each(|l| quiet.see(l));
        assert_eq!(quiet.render(), "");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn bench_runs_only_bench_targets_and_passes_criterion_options() {
        assert_eq!(
            bench_args(&strings(&["pbft", "--", "--warm-up-time", "2"])),
            strings(&[
                "bench",
                "--benches",
                "-p",
                "fed-pbft",
                "--",
                "--warm-up-time",
                "2"
            ])
        );
        assert_eq!(
            bench_args(&[]),
            strings(&["bench", "--benches", "--workspace"])
        );
    }
}
