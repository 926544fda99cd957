//! Command-line options and the value parsers behind them. Every flag is also a `LOADGEN_*`
//! environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use http::{HeaderName, HeaderValue};

use crate::schedule::{Profile, Segment};

/// Open-loop load against an HTTP endpoint, with latency measured from each request's
/// intended send time (no coordinated omission), a per-second series, and plots.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = EXAMPLES)]
#[command(group(ArgGroup::new("profile").required(true).args(["rate", "stages", "profile_file", "step", "spike", "concurrency"])))]
pub struct Opts {
    /// URL to send requests to; `http://host:port` alone means `/v1/classify`.
    #[arg(long, env = "LOADGEN_TARGET", value_parser = parse_target)]
    pub target: http::Uri,
    /// Constant open-loop rate, requests/s (with --duration).
    #[arg(long, env = "LOADGEN_RATE", requires = "duration")]
    pub rate: Option<f64>,
    /// Run length for --rate and --concurrency (e.g. 60s, 2m).
    #[arg(long, env = "LOADGEN_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stages `DURATION:RATE,…`: each ramps linearly from the previous rate (0 at first),
    /// as k6's ramping-arrival-rate does. E.g. `30s:5,2m:40,1m:40,30s:0`.
    #[arg(long, env = "LOADGEN_STAGES", value_parser = parse_stages)]
    pub stages: Option<Profile>,
    /// A file of stages, one `DURATION:RATE` per line (`#` comments), for profiles too long
    /// for a command line; the same ramps as --stages.
    #[arg(long, env = "LOADGEN_PROFILE_FILE", value_parser = parse_profile_file)]
    pub profile_file: Option<Profile>,
    /// Steps `FROM:TO:STEPS:EACH`: STEPS constant rates from FROM to TO, each held EACH.
    #[arg(long, env = "LOADGEN_STEP", value_parser = parse_step)]
    pub step: Option<Profile>,
    /// Spike `BASE:PEAK:LENGTH`: 30 s at BASE, LENGTH at PEAK (instant jump), 30 s at BASE.
    #[arg(long, env = "LOADGEN_SPIKE", value_parser = parse_spike)]
    pub spike: Option<Profile>,
    /// Closed loop instead: N requests always outstanding (peak-throughput probing; its
    /// latencies hide queueing, which the report says).
    #[arg(long, env = "LOADGEN_CONCURRENCY", requires = "duration")]
    pub concurrency: Option<usize>,
    /// Poisson arrivals (exponential gaps) instead of evenly spaced sends.
    #[arg(long, env = "LOADGEN_POISSON")]
    pub poisson: bool,
    /// Seed for --poisson and --shuffle.
    #[arg(long, env = "LOADGEN_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Directory of JPEG/PNG/WebP images to send (cycled in name order).
    #[arg(long, env = "LOADGEN_IMAGES")]
    pub images: Option<PathBuf>,
    /// Pick images at random instead of cycling.
    #[arg(long, env = "LOADGEN_SHUFFLE", requires = "images")]
    pub shuffle: bool,
    /// Size of the synthetic JPEG sent when no --images are given, `WIDTHxHEIGHT`.
    #[arg(long, env = "LOADGEN_SYNTHETIC", default_value = "640x480", value_parser = parse_size)]
    pub synthetic: (u32, u32),
    /// Extra request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-request timeout (counted as an error).
    #[arg(long, env = "LOADGEN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Most requests in flight at once (= most connections). A send due while all are busy
    /// waits and is counted late; its latency still counts from its intended time.
    #[arg(long, env = "LOADGEN_CONNECTIONS", default_value_t = 512)]
    pub connections: usize,
    /// Disable HTTP keep-alive (a new connection per request).
    #[arg(long, env = "LOADGEN_NO_KEEPALIVE")]
    pub no_keepalive: bool,
    /// Write the summary and per-second series as JSON.
    #[arg(long, env = "LOADGEN_OUT")]
    pub out: Option<PathBuf>,
    /// Write the per-second series as CSV.
    #[arg(long, env = "LOADGEN_CSV")]
    pub csv: Option<PathBuf>,
    /// Draw offered/achieved rate, latency percentiles and replicas (`.png`, `.svg` or `.html`).
    #[arg(long, env = "LOADGEN_PLOT")]
    pub plot: Option<PathBuf>,
    /// Follow a Deployment's replica count each second (`deployment/NAME`, kube config from
    /// the environment).
    #[arg(long, env = "LOADGEN_WATCH", value_parser = parse_watch)]
    pub watch: Option<String>,
    /// Namespace of --watch.
    #[arg(long, env = "LOADGEN_NAMESPACE", default_value = "imageclassifier")]
    pub namespace: String,
    /// Kubeconfig context of --watch, when it is not the current one (as `kubectl --context`).
    #[arg(long, env = "LOADGEN_CONTEXT", requires = "watch")]
    pub context: Option<String>,
    /// Exit non-zero when the share of failed requests exceeds this (0–1).
    #[arg(long, env = "LOADGEN_MAX_ERROR_RATE", value_parser = parse_fraction)]
    pub max_error_rate: Option<f64>,
    /// No progress bar (also off when stderr is not a terminal).
    #[arg(long, env = "LOADGEN_QUIET")]
    pub quiet: bool,
}

const EXAMPLES: &str = "Examples:
  loadgen --target http://localhost:8080/v1/classify --rate 20 --duration 60s
  loadgen --target http://localhost:8080/v1/classify --stages 30s:5,2m:40,1m:40,30s:0 \\
          --watch deployment/inference --plot run.svg --out run.json
  loadgen --target http://localhost:8080/v1/classify --concurrency 8 --duration 30s";

/// What drives the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Sends at scheduled times (latency from the intended time).
    OpenLoop(Profile),
    /// N workers back to back for a duration.
    ClosedLoop {
        /// Workers.
        concurrency: usize,
        /// Run length.
        duration: Duration,
    },
}

impl Opts {
    /// The load shape the flags describe (clap guarantees exactly one is given).
    pub fn mode(&self) -> Mode {
        if let Some(concurrency) = self.concurrency {
            return Mode::ClosedLoop {
                concurrency,
                duration: self.duration.unwrap_or_default(),
            };
        }
        if let Some(rate) = self.rate {
            return Mode::OpenLoop(Profile::constant(rate, self.duration.unwrap_or_default()));
        }
        let profile = [&self.stages, &self.profile_file, &self.step, &self.spike]
            .into_iter()
            .find_map(|p| p.clone())
            .unwrap_or(Profile {
                segments: Vec::new(),
            });
        Mode::OpenLoop(profile)
    }
}

fn parse_target(s: &str) -> Result<http::Uri, String> {
    if !s.contains("://") {
        return Err(format!(
            "'{s}' needs a scheme, e.g. http://localhost:8080/v1/classify"
        ));
    }
    let uri: http::Uri = s.parse().map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https targets are not supported; use http://".into()),
        _ => {
            return Err(format!(
                "'{s}' needs a scheme, e.g. http://localhost:8080/v1/classify"
            ));
        }
    }
    if uri.host().is_none() {
        return Err(format!("'{s}' has no host"));
    }
    // A bare `http://host:port` means the classification endpoint.
    if uri.path() == "/" && !s.ends_with('/') {
        let with_path = format!("{}/v1/classify", s.trim_end_matches('/'));
        return with_path
            .parse()
            .map_err(|e| format!("'{with_path}' is not a URL: {e}"));
    }
    Ok(uri)
}

/// `30s`, `2m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 30s or 2m: {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a rate (requests/s)"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err(format!("rate {s} must be a non-negative number"));
    }
    Ok(rate)
}

/// `30s:5,2m:40,30s:0`.
pub fn parse_stages(s: &str) -> Result<Profile, String> {
    let stages = s
        .split(',')
        .map(|stage| {
            let (d, r) = stage
                .split_once(':')
                .ok_or_else(|| format!("stage '{stage}' must be DURATION:RATE, e.g. 30s:5"))?;
            Ok((parse_duration(d)?, parse_rate(r)?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let profile = Profile::stages(&stages);
    if profile.duration().is_zero() {
        return Err("the stages add up to zero time".into());
    }
    Ok(profile)
}

/// A stages file: `DURATION:RATE` lines, blank lines and `#` comments ignored.
pub fn parse_profile_file(path: &str) -> Result<Profile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read '{path}': {e}"))?;
    let stages: Vec<&str> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .collect();
    if stages.is_empty() {
        return Err(format!("'{path}' holds no DURATION:RATE lines"));
    }
    parse_stages(&stages.join(",")).map_err(|e| format!("{path}: {e}"))
}

/// `FROM:TO:STEPS:EACH`, e.g. `5:40:4:30s` → 5, 16.7, 28.3, 40 requests/s for 30 s each.
pub fn parse_step(s: &str) -> Result<Profile, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [from, to, steps, each] = parts.as_slice() else {
        return Err(format!(
            "step '{s}' must be FROM:TO:STEPS:EACH, e.g. 5:40:4:30s"
        ));
    };
    let (from, to) = (parse_rate(from)?, parse_rate(to)?);
    let steps: usize = steps
        .parse()
        .map_err(|_| format!("'{steps}' is not a number of steps"))?;
    if steps < 2 {
        return Err("a step profile needs at least 2 steps".into());
    }
    let each = parse_duration(each)?;
    let segments = (0..steps)
        .map(|i| {
            let rate = from + (to - from) * i as f64 / (steps - 1) as f64;
            Segment {
                duration: each,
                from: rate,
                to: rate,
            }
        })
        .collect();
    Ok(Profile { segments })
}

/// `BASE:PEAK:LENGTH`, e.g. `5:40:20s`.
pub fn parse_spike(s: &str) -> Result<Profile, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [base, peak, length] = parts.as_slice() else {
        return Err(format!(
            "spike '{s}' must be BASE:PEAK:LENGTH, e.g. 5:40:20s"
        ));
    };
    let (base, peak, length) = (
        parse_rate(base)?,
        parse_rate(peak)?,
        parse_duration(length)?,
    );
    let around = Duration::from_secs(30);
    let flat = |duration, rate| Segment {
        duration,
        from: rate,
        to: rate,
    };
    Ok(Profile {
        segments: vec![flat(around, base), flat(length, peak), flat(around, base)],
    })
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("'{s}' must be WIDTHxHEIGHT, e.g. 640x480"))?;
    let w: u32 = w.parse().map_err(|_| format!("bad width in '{s}'"))?;
    let h: u32 = h.parse().map_err(|_| format!("bad height in '{s}'"))?;
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        return Err(format!("'{s}': sides must be 1–8192"));
    }
    Ok((w, h))
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header '{s}' must be 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| format!("bad header name in '{s}': {e}"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|e| format!("bad header value in '{s}': {e}"))?;
    Ok((name, value))
}

fn parse_watch(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some(("deployment" | "deployments" | "deploy", name)) if !name.is_empty() => {
            Ok(name.to_string())
        }
        _ => Err(format!("'{s}' must be deployment/NAME")),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=1.0).contains(&f) {
        return Err(format!("{s} must be between 0 and 1"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_into_linked_ramps() {
        let p = parse_stages("30s:5,2m:40,1m:40,30s:0").expect("valid");
        let seg = |d: u64, from: f64, to: f64| Segment {
            duration: Duration::from_secs(d),
            from,
            to,
        };
        assert_eq!(
            p.segments,
            vec![
                seg(30, 0.0, 5.0),
                seg(120, 5.0, 40.0),
                seg(60, 40.0, 40.0),
                seg(30, 40.0, 0.0)
            ]
        );
        assert_eq!(p.duration(), Duration::from_secs(240));
    }

    #[test]
    fn bad_profiles_are_explained() {
        for (input, needle) in [
            ("30s", "DURATION:RATE"),
            ("30x:5", "not a duration"),
            ("30s:-1", "non-negative"),
            ("30s:fast", "not a rate"),
            ("0s:5", "zero time"),
        ] {
            let err = parse_stages(input).expect_err(input);
            assert!(err.contains(needle), "{input}: {err}");
        }
        assert!(
            parse_step("5:40:1:30s")
                .expect_err("one step")
                .contains("at least 2")
        );
        assert!(
            parse_spike("5:40")
                .expect_err("short")
                .contains("BASE:PEAK:LENGTH")
        );
        assert!(parse_target("localhost:8080").is_err());
        assert_eq!(
            parse_target("http://h:8080").map(|u| u.to_string()),
            Ok("http://h:8080/v1/classify".into())
        );
        assert_eq!(
            parse_target("http://h:8080/").map(|u| u.path().to_string()),
            Ok("/".into())
        );
        assert!(
            parse_target("https://x/")
                .expect_err("https")
                .contains("http://")
        );
        assert!(parse_watch("pod/x").is_err());
        assert!(parse_fraction("1.5").is_err());
    }

    #[test]
    fn steps_and_spikes_expand_to_flat_segments() {
        let p = parse_step("5:35:4:10s").expect("valid");
        let rates: Vec<f64> = p.segments.iter().map(|s| s.from).collect();
        assert_eq!(rates, vec![5.0, 15.0, 25.0, 35.0]);
        let s = parse_spike("5:40:20s").expect("valid");
        assert_eq!(s.duration(), Duration::from_secs(80));
        assert_eq!(s.rate_at(Duration::from_secs(40)), 40.0);
        assert_eq!(s.rate_at(Duration::from_secs(10)), 5.0);
    }

    #[test]
    fn exactly_one_profile_is_required() {
        let target = ["loadgen", "--target", "http://localhost:8080/v1/classify"];
        assert!(Opts::try_parse_from(target).is_err());
        let both = [
            &target[..],
            &["--rate", "5", "--duration", "1s", "--stages", "1s:5"],
        ]
        .concat();
        assert!(Opts::try_parse_from(both).is_err());
        let rate_only = [&target[..], &["--rate", "5"]].concat();
        assert!(
            Opts::try_parse_from(rate_only).is_err(),
            "--rate needs --duration"
        );
        let ok = [&target[..], &["--rate", "5", "--duration", "2s"]].concat();
        let opts = Opts::try_parse_from(ok).expect("valid");
        assert_eq!(
            opts.mode(),
            Mode::OpenLoop(Profile::constant(5.0, Duration::from_secs(2)))
        );
    }

    #[test]
    fn profile_files_hold_stages() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ramp.txt");
        std::fs::write(&path, "# warm up\n30s:5\n\n2m:40   # ramp\n30s:0\n").expect("write");
        let from_file = parse_profile_file(path.to_str().expect("UTF-8")).expect("parses");
        assert_eq!(
            from_file,
            parse_stages("30s:5,2m:40,30s:0").expect("parses")
        );
        std::fs::write(&path, "# nothing\n").expect("write");
        let empty = parse_profile_file(path.to_str().expect("UTF-8")).expect_err("empty");
        assert!(empty.contains("no DURATION:RATE lines"), "{empty}");
        std::fs::write(&path, "30s\n").expect("write");
        let bad = parse_profile_file(path.to_str().expect("UTF-8")).expect_err("bad");
        assert!(bad.contains("must be DURATION:RATE"), "{bad}");
        assert!(
            parse_profile_file("/nonexistent/x")
                .expect_err("missing")
                .contains("cannot read")
        );
    }
}
