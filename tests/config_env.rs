//! Configuration from the shipped example file and from `VIGIL_*` environment variables.
//! (Its own test binary: it changes the process environment.)

use std::path::Path;
use std::time::Duration;

use vigil::Config;

#[test]
fn example_file_loads_and_environment_overrides_every_section() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("vigil.example.toml");
    let c = Config::load(Some(&example)).expect("the example config is valid");
    assert_eq!(c.kafka.input_topics, vec!["metrics"]);

    std::env::set_var("VIGIL_KAFKA_BROKERS", "k1:9092,k2:9092");
    std::env::set_var("VIGIL_KAFKA_INPUT_TOPICS", "a, b");
    std::env::set_var("VIGIL_WINDOW_SIZE", "30s");
    std::env::set_var("VIGIL_DETECTOR_WARMUP_WINDOWS", "30");
    std::env::set_var("VIGIL_SERVER_LISTEN", "0.0.0.0:9999");
    let c = Config::load(Some(&example)).unwrap();
    assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
    assert_eq!(c.kafka.input_topics, vec!["a", "b"]);
    assert_eq!(c.window.size, Duration::from_secs(30));
    assert_eq!(c.detector.warmup_windows, 30);
    assert_eq!(c.server.listen.port(), 9999);

    std::env::set_var("VIGIL_WINDOW_SIZE", "soon");
    let e = Config::load(Some(&example)).unwrap_err().to_string();
    assert!(e.contains("window.size") || e.contains("size"), "{e}");
    std::env::set_var("VIGIL_WINDOW_SIZE", "10s");
    std::env::set_var("VIGIL_DETECTOR_WARMUP_WINDOWS", "500");
    let e = Config::load(Some(&example)).unwrap_err().to_string();
    assert!(e.starts_with("config key `detector.warmup_windows`"), "{e}");
    std::env::remove_var("VIGIL_DETECTOR_WARMUP_WINDOWS");

    let e = Config::load(Some(Path::new("/nonexistent/vigil.toml"))).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/vigil.toml"), "{e}");
}
