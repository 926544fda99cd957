//! loadgen against real local servers on free ports.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;
use loadgen::Opts;

/// A server that answers after `delay`, stalls everything between 1 s and 2 s after its first
/// request when `stall` is set, and answers with `status`.
async fn server(delay: Duration, stall: bool, status: StatusCode) -> String {
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let handler = move || {
        let first = first.clone();
        async move {
            let t0 = *first.lock().expect("lock").get_or_insert_with(Instant::now);
            if stall {
                let since = t0.elapsed();
                if since >= Duration::from_secs(1) && since < Duration::from_secs(2) {
                    tokio::time::sleep(Duration::from_secs(2) - since).await;
                }
            }
            tokio::time::sleep(delay).await;
            (status, "{}")
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/v1/classify",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/v1/classify", post(handler))).await
    });
    url
}

fn opts(url: &str, args: &[&str]) -> Opts {
    let mut argv = vec![
        "loadgen",
        "--target",
        url,
        "--quiet",
        "--synthetic",
        "64x48",
    ];
    argv.extend_from_slice(args);
    Opts::parse_from(argv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_hits_the_target_rate_and_measures_latency() {
    let url = server(Duration::from_millis(20), false, StatusCode::OK).await;
    let report = loadgen::run(opts(&url, &["--rate", "200", "--duration", "3s"]))
        .await
        .expect("run");
    assert_eq!(report.requests, 600, "exactly rate × duration sends");
    assert_eq!(report.errors, 0);
    let achieved = report.requests as f64 / report.duration_s;
    assert!(
        (achieved / 200.0 - 1.0).abs() < 0.02,
        "achieved {achieved:.1}/s for 200/s"
    );
    for row in report.series.iter().take(3) {
        assert_eq!(row.measured.sent, 200, "second {}", row.measured.second);
        assert_eq!(row.offered, Some(200.0));
    }
    let achieved: u64 = report.series.iter().map(|r| r.measured.completed).sum();
    assert_eq!(
        achieved, 600,
        "every response is counted once, in the second it arrived"
    );
    let l = report.latency_ms;
    assert!(l.p50 >= 20.0 && l.p50 < 30.0, "server takes 20 ms: {l:?}");
    assert!(report.coordinated_omission_free);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stall_shows_up_in_open_loop_latencies_but_closed_loop_omits_it() {
    // One connection, so nothing can be sent while the server stalls: a closed-loop client
    // simply stops sending (coordinated omission); the open loop keeps the schedule and
    // charges the wait to the requests that were due.
    let url = server(Duration::from_millis(2), true, StatusCode::OK).await;
    let open = loadgen::run(opts(
        &url,
        &["--rate", "50", "--duration", "3s", "--connections", "1"],
    ))
    .await
    .expect("open");
    let stalled = &open.series[1].measured;
    assert_eq!(
        stalled.sent, 50,
        "every request due in the stall second is accounted for"
    );
    assert!(
        stalled.p50_ms >= 400.0,
        "requests due during the stall waited: p50 {}",
        stalled.p50_ms
    );
    assert!(open.late >= 40, "they were sent late: {}", open.late);

    let url = server(Duration::from_millis(2), true, StatusCode::OK).await;
    let closed = loadgen::run(opts(&url, &["--concurrency", "1", "--duration", "3s"]))
        .await
        .expect("closed");
    assert!(
        !closed.coordinated_omission_free,
        "closed loop is labelled as such"
    );
    assert!(
        closed.series[1].measured.sent <= 3,
        "closed loop sent almost nothing during the stall"
    );
    let slow = closed
        .series
        .iter()
        .map(|r| r.measured.p50_ms)
        .filter(|p| *p >= 400.0)
        .count();
    assert!(slow <= 1, "the stall is one slow sample, not many");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_files_hold_the_series_and_the_plot_is_drawn() {
    let url = server(Duration::from_millis(5), false, StatusCode::OK).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run.json");
    let csv = dir.path().join("run.csv");
    let plot = dir.path().join("run.svg");
    let html = dir.path().join("run.html");
    let (o, c, p) = (
        out.to_str().expect("utf8"),
        csv.to_str().expect("utf8"),
        plot.to_str().expect("utf8"),
    );
    loadgen::run(opts(
        &url,
        &[
            "--stages",
            "1s:20,1s:40",
            "--out",
            o,
            "--csv",
            c,
            "--plot",
            p,
        ],
    ))
    .await
    .expect("run");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("json")).expect("valid JSON");
    assert_eq!(json["mode"], "open-loop");
    assert!(
        json["series"]
            .as_array()
            .is_some_and(|s| (2..=3).contains(&s.len()))
    );
    assert_eq!(json["requests"], 10 + 30);
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("second,offered,sent,ok,errors,achieved,p50_ms,p99_ms,replicas")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows.len() == 2 || rows.len() == 3,
        "the last responses may land in second 2: {rows:?}"
    );
    assert!(rows[1].starts_with("1,30.000,30,30,0,"), "{}", rows[1]);
    let svg = std::fs::read_to_string(&plot).expect("svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("Request rate") && svg.contains("polyline"),
        "{}",
        &svg[..200.min(svg.len())]
    );

    let h = html.to_str().expect("utf8");
    loadgen::run(opts(
        &url,
        &["--concurrency", "2", "--duration", "1s", "--plot", h],
    ))
    .await
    .expect("run");
    assert!(
        std::fs::read_to_string(&html)
            .expect("html")
            .contains("<svg")
    );

    // PNG: a real raster of the same chart (two panels of 1000×300 without --watch).
    let png = dir.path().join("run.png");
    let p = png.to_str().expect("utf8");
    loadgen::run(opts(
        &url,
        &["--rate", "20", "--duration", "1s", "--plot", p],
    ))
    .await
    .expect("run");
    let picture = image::open(&png).expect("a decodable PNG");
    assert_eq!((picture.width(), picture.height()), (1000, 600));
    let rgb = picture.to_rgb8();
    let coloured = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(
        coloured > 5_000,
        "the chart is drawn, not a blank page: {coloured} pixels"
    );
}

#[test]
fn user_errors_are_clear_and_the_error_rate_sets_the_exit_code() {
    let bin = env!("CARGO_BIN_EXE_loadgen");
    let run = |args: &[&str]| Command::new(bin).args(args).output().expect("run loadgen");
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    let empty = tempfile::tempdir().expect("dir");
    let empty = empty.path().to_str().expect("utf8");
    let one_second = ["--rate", "1", "--duration", "1s"];
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["--target", "localhost:8080/v1/classify"], "scheme"),
        (
            vec!["--target", "http://127.0.0.1:9/v1/classify"],
            "cannot connect to 127.0.0.1:9",
        ),
        (
            vec!["--target", "http://127.0.0.1:9/", "--images", empty],
            "no JPEG, PNG or WebP images",
        ),
        (
            vec!["--target", "http://127.0.0.1:9/", "--plot", "x.gif"],
            ".png, .svg or .html",
        ),
        (
            vec!["--target", "http://127.0.0.1:9/", "--stages", "30s:5,2m"],
            "DURATION:RATE",
        ),
    ];
    for (args, needle) in cases {
        // The stages case brings its own profile; the others run one second at 1/s.
        let profile: &[&str] = if args.contains(&"--stages") {
            &[]
        } else {
            &one_second
        };
        let o = run(&[args.as_slice(), profile].concat());
        assert!(
            !o.status.success() && stderr(&o).contains(needle),
            "{args:?}: {}",
            stderr(&o)
        );
    }

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = runtime.block_on(server(
        Duration::ZERO,
        false,
        StatusCode::INTERNAL_SERVER_ERROR,
    ));
    let o = run(&[
        "--target",
        &url,
        "--rate",
        "20",
        "--duration",
        "1s",
        "--max-error-rate",
        "0.1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("above --max-error-rate"));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("500: 20"),
        "summary lists statuses"
    );
}
