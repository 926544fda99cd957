//! Checks of the repository's scripts that need neither a cluster nor a run: what git records
//! for them (a fresh clone must be able to run them) and how they start background jobs.

use std::collections::BTreeSet;
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `(mode, path)` of every file under version control, as a fresh clone will have them.
fn tracked_files() -> Vec<(String, String)> {
    let output = Command::new("git")
        .args(["-C", ROOT, "ls-files", "-s"])
        .output()
        .expect("run git ls-files");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|line| {
            // `<mode> <object> <stage>\t<path>`
            let (meta, path) = line.split_once('\t')?;
            let mode = meta.split_whitespace().next()?;
            Some((mode.to_owned(), path.to_owned()))
        })
        .collect()
}

/// Tracked shell scripts (by extension or by a shell in their first line), with their text.
fn shell_scripts() -> Vec<(String, String)> {
    tracked_files()
        .into_iter()
        .filter(|(mode, _)| mode != "120000")
        .filter_map(|(_, path)| {
            let text = std::fs::read_to_string(format!("{ROOT}/{path}")).ok()?;
            let first = text.lines().next().unwrap_or_default();
            let shell = path.ends_with(".sh") || (first.starts_with("#!") && first.contains("sh"));
            shell.then_some((path, text))
        })
        .collect()
}

#[test]
fn every_script_run_as_a_program_has_its_run_bit() {
    let mut checked = 0;
    let mut missing = Vec::new();
    for (mode, path) in tracked_files() {
        if mode == "120000" {
            continue; // a symbolic link: its target is checked
        }
        let Ok(bytes) = std::fs::read(format!("{ROOT}/{path}")) else {
            continue; // deleted in the working tree; git still lists it
        };
        let program = bytes.starts_with(b"#!");
        // A library other scripts source says so to shellcheck instead of having a #! line.
        let library = bytes.starts_with(b"# shellcheck shell=");
        if program || path.ends_with(".sh") {
            checked += 1;
            if library && mode == "100755" {
                missing.push(format!("{path}: a sourced library marked executable"));
            } else if !program && !library {
                missing.push(format!(
                    "{path}: a shell script without a #! line (or `# shellcheck shell=bash` \
                     as its first line, for a library that is only sourced)"
                ));
            } else if program && mode != "100755" {
                missing.push(format!(
                    "{path}: mode {mode} (fix: git update-index --chmod=+x {path})"
                ));
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} scripts found: is git working?"
    );
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Shell lines with `\`-continuations joined, so a command is one line.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// Names of the shell functions a script defines (`name() {`).
fn functions(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim_start().split_once("()")?;
            let name = name.trim_end();
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            (valid && rest.trim_start().starts_with('{')).then(|| name.to_owned())
        })
        .collect()
}

/// The program of each command a line sends to the background with a lone `&`.
fn background_commands(line: &str) -> Vec<String> {
    let code = match line.trim_start().starts_with('#') {
        true => return Vec::new(),
        false => line,
    };
    let bytes = code.as_bytes();
    let mut programs = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'&' {
            continue;
        }
        let doubled = bytes.get(i + 1) == Some(&b'&') || (i > 0 && bytes[i - 1] == b'&');
        let redirect = bytes.get(i + 1) == Some(&b'>') || (i > 0 && bytes[i - 1] == b'>');
        if doubled || redirect {
            continue;
        }
        let command = &code[start..i];
        // The command starts after the last `;`, `&&`, `||`, `(` or `then`/`do` before it.
        let command = command
            .rsplit(['(', ';'])
            .next()
            .unwrap_or(command)
            .rsplit("&&")
            .next()
            .unwrap_or(command)
            .rsplit("||")
            .next()
            .unwrap_or(command);
        let program = command
            .split_whitespace()
            .find(|word| !word.contains('=') && !matches!(*word, "then" | "do" | "else"));
        if let Some(program) = program {
            programs.push(program.to_owned());
        }
        start = i + 1;
    }
    programs
}

#[test]
fn background_jobs_are_programs_not_shell_functions() {
    let mut found = 0;
    let mut wrong = Vec::new();
    for (path, text) in shell_scripts() {
        let functions = functions(&text);
        for line in logical_lines(&text) {
            for program in background_commands(&line) {
                found += 1;
                if functions.contains(&program) {
                    wrong.push(format!(
                        "{path}: `{}` runs the shell function {program} in the background: \
                         `$!` is then a subshell, and killing it leaves the real process running",
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found >= 10,
        "only {found} background jobs found: is the parser broken?"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_background_parser_sees_what_bash_sends_to_the_background() {
    assert_eq!(
        background_commands(r#"k -n "$ns" port-forward svc/dispatcher 18080:8080 >"$log" 2>&1 &"#),
        ["k"]
    );
    assert_eq!(
        background_commands(r#"A=1 B="$x" e2e/loadtest.sh >"$out/log" 2>&1 & pids+=($!)"#),
        ["e2e/loadtest.sh"]
    );
    assert!(background_commands("make a && make b || exit 1").is_empty());
    assert!(background_commands("# comment &").is_empty());
    assert_eq!(background_commands("cd x; serve &"), ["serve"]);
    let text = "k() { kubectl \"$@\"; }\nstart_all () {\n  :\n}\n";
    assert_eq!(
        functions(text),
        BTreeSet::from(["k".to_owned(), "start_all".to_owned()])
    );
}
