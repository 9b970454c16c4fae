//! docs/recipes.md run as written: the files its blocks name are written (a YAML block's first
//! line is the line already in the file, the rest is added under it), and its `engine` lines
//! run in order, each expected to exit as its `# exits N` comment says. On a copy of the shipped
//! pipelines, fixtures and migrations, against real Postgres (a schema of its own), with an
//! event received before the change so that the recipe's replay has a past to rewrite.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{copy_tree, empty_schema, free_port, pg};

/// One step of a recipe, as the page writes it.
#[derive(Debug)]
enum Step {
    /// A file block: write (`sql`) or add lines under the block's first line (`yaml`).
    File {
        path: String,
        lang: String,
        text: String,
    },
    /// An `engine ...` line and the exit status its comment says.
    Run { line: String, exits: i32 },
}

/// The steps of the recipe under `## {title}` in docs/recipes.md.
fn recipe(title: &str) -> Vec<Step> {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes.md"))
            .unwrap();
    let start = page
        .find(&format!("\n## {title}\n"))
        .expect("the recipe's heading");
    let body = &page[start + 1..];
    let body = &body[..body[3..].find("\n## ").map_or(body.len(), |i| i + 3)];
    let mut steps = Vec::new();
    let mut lines = body.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let (lang, path) = info.split_once(' ').unwrap_or((info, ""));
        if lang == "sh" {
            for l in block {
                let (command, comment) = l.split_once('#').unwrap_or((l, ""));
                let exits = comment
                    .trim()
                    .strip_prefix("exits ")
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("`{l}` says how it exits (`# exits N`)"));
                steps.push(Step::Run {
                    line: command.trim().to_string(),
                    exits,
                });
            }
        } else {
            assert!(!path.is_empty(), "a `{lang}` block names its file: {line}");
            steps.push(Step::File {
                path: path.to_string(),
                lang: lang.to_string(),
                text: block.join("\n") + "\n",
            });
        }
    }
    steps
}

fn apply(root: &Path, step: &Step, env: &[(&str, String)]) {
    match step {
        Step::File { path, lang, text } if lang == "yaml" => {
            let file = root.join(path);
            let was = std::fs::read_to_string(&file).unwrap();
            let (first, _) = text.split_once('\n').unwrap();
            let at = was
                .find(&format!("{first}\n"))
                .unwrap_or_else(|| panic!("{path} has the line `{first}`"));
            let now = format!("{}{text}{}", &was[..at], &was[at + first.len() + 1..]);
            std::fs::write(file, now).unwrap();
        }
        Step::File { path, text, .. } => std::fs::write(root.join(path), text).unwrap(),
        Step::Run { line, exits } => {
            assert!(line.starts_with("engine "), "{line}");
            let bin = PathBuf::from(env!("CARGO_BIN_EXE_engine"));
            let path = format!(
                "{}:{}",
                bin.parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let out = Command::new("sh")
                .arg("-c")
                .arg(line)
                .current_dir(root)
                .env_clear()
                .env("PATH", path)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(*exits),
                "`{line}`:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `engine serve` (development: the embedded queue, Postgres sinks and archive) on a free port.
fn serve(root: &Path, env: &[(&str, String)], port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["serve", "--pipelines", "pipelines"])
        .current_dir(root)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn add_a_field() {
    let steps = recipe("Add a field");
    assert!(steps.len() >= 8, "{steps:?}");

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["pipelines", "fixtures", "migrations"] {
        copy_tree(&shipped.join(dir), &root.join(dir));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, schema) = rt.block_on(empty_schema("recipe"));
    let env = [
        ("DATABASE_URL", url.clone()),
        ("VAPI_WEBHOOK_SECRET", "recipe-vapi-secret".to_string()),
        (
            "ENCRYPTION_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".to_string(),
        ),
    ];
    apply(
        root,
        &Step::Run {
            line: "engine migrate".into(),
            exits: 0,
        },
        &env,
    );

    // before the change: one end-of-call report received, stored without the column
    let port = free_port();
    let mut server = serve(root, &env, port);
    let body =
        std::fs::read(shipped.join("fixtures/payloads/vapi/end-of-call-report.json")).unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let sent = rt.block_on(
            client
                .post(format!("http://127.0.0.1:{port}/api/webhooks/vapi"))
                .bearer_auth("recipe-vapi-secret")
                .header("content-type", "application/json")
                .body(body.clone())
                .send(),
        );
        match sent {
            Ok(r) => break r.status(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(status, 200);
    let count = |sql: &str| -> i64 {
        rt.block_on(async { pg(&schema).await.query_one(sql, &[]).await.unwrap().get(0) })
    };
    while count("SELECT count(*) FROM call_logs") == 0 {
        assert!(Instant::now() < deadline, "the report was never written");
        std::thread::sleep(Duration::from_millis(100));
    }
    // archived with its outcome before the queue lets go of it
    while count("SELECT count(*) FROM engine_events") == 0 {
        assert!(Instant::now() < deadline, "the report was never archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();

    for step in &steps {
        apply(root, step, &env);
    }

    // the migration applied, the past row rewritten with the new column
    let booked: Option<bool> = rt.block_on(async {
        pg(&schema)
            .await
            .query_one("SELECT appointment_booked FROM call_logs", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(booked, Some(true));
    // the fixture's expectation carries the field, next to the others of the row
    let fixture =
        std::fs::read_to_string(root.join("fixtures/vapi/end-of-call-report.yaml")).unwrap();
    assert!(
        fixture.contains("\n      - appointment_booked: true\n"),
        "{fixture}"
    );
}
