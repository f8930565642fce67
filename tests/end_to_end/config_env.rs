//! Configuration from the shipped example file and from `VIGIL_*` environment variables, through
//! the real `vigil config` command (the environment is set on the child process only, so these
//! tests never race the others in this binary).

use std::path::{Path, PathBuf};
use std::process::Command;

use vigil::Config;

fn example() -> PathBuf {
    // The package directory `cargo test` gives the run, else the build's (a binary reused from a
    // build of another checkout would otherwise read that checkout's file).
    let package = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    package.join("vigil.example.toml")
}

/// Runs `vigil config -c <file>` with the given extra environment; returns (success, stdout, stderr).
fn vigil_config(file: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    cmd.arg("config").arg("-c").arg(file);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("VIGIL_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied()).env("RUST_LOG", "error");
    let out = cmd.output().expect("vigil binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn example_file_loads_as_shipped() {
    let c = Config::load(Some(&example())).expect("the example config is valid");
    assert_eq!(c.kafka.input_topics, vec!["metrics"]);
    let (ok, out, err) = vigil_config(&example(), &[]);
    assert!(ok, "{err}");
    assert!(out.contains("[kafka]") && out.contains("[window]"), "{out}");
}

#[test]
fn environment_overrides_every_section() {
    let (ok, out, err) = vigil_config(
        &example(),
        &[
            ("VIGIL_KAFKA_BROKERS", "k1:9092,k2:9092"),
            ("VIGIL_KAFKA_INPUT_TOPICS", "a, b"),
            ("VIGIL_WINDOW_SIZE", "30s"),
            ("VIGIL_DETECTOR_WARMUP_WINDOWS", "30"),
            ("VIGIL_SERVER_LISTEN", "0.0.0.0:9999"),
        ],
    );
    assert!(ok, "{err}");
    // `vigil config` prints the effective configuration as TOML; read it back.
    let c: Config = toml::from_str(&out).unwrap_or_else(|e| panic!("effective config parses: {e}\n{out}"));
    assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
    assert_eq!(c.kafka.input_topics, vec!["a", "b"]);
    assert_eq!(c.window.size, std::time::Duration::from_secs(30));
    assert_eq!(c.detector.warmup_windows, 30);
    assert_eq!(c.server.listen.port(), 9999);
}

#[test]
fn bad_values_name_the_key_and_exit_nonzero() {
    let (ok, _, err) = vigil_config(&example(), &[("VIGIL_WINDOW_SIZE", "soon")]);
    assert!(!ok);
    assert!(err.contains("window.size"), "{err}");

    let (ok, _, err) = vigil_config(&example(), &[("VIGIL_DETECTOR_WARMUP_WINDOWS", "500")]);
    assert!(!ok);
    assert!(err.contains("config key `detector.warmup_windows`"), "{err}");

    let (ok, _, err) = vigil_config(Path::new("/nonexistent/vigil.toml"), &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/vigil.toml"), "{err}");
}
