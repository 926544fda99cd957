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

/// Names of the shell functions a script defines (`name() {`, `function name {`), and those of
/// the files it sources as `. "$root/PATH"` or `source "$root/PATH"`.
fn functions(text: &str) -> BTreeSet<String> {
    let valid = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let mut names = BTreeSet::new();
    for line in text.lines().map(str::trim_start) {
        let definition = line.strip_prefix("function ").unwrap_or(line);
        let name = match definition.split_once("()") {
            Some((name, _)) => name.trim_end(),
            None if line.starts_with("function ") => {
                definition.split_whitespace().next().unwrap_or_default()
            }
            None => continue,
        };
        if valid(name) {
            names.insert(name.to_owned());
        }
    }
    for line in text.lines().map(str::trim_start) {
        let sourced = line
            .strip_prefix(". ")
            .or_else(|| line.strip_prefix("source "))
            .map(|rest| rest.trim().trim_matches('"'))
            .and_then(|path| path.strip_prefix("$root/"));
        if let Some(path) = sourced {
            let library = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_default();
            names.extend(functions(&library));
        }
    }
    names
}

/// The line with quoted strings, `$(…)` substitutions and a trailing comment blanked out (`_`),
/// so that only the shell's own operators are left to read.
fn code_only(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut previous = ' ';
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push('_');
                for inner in chars.by_ref() {
                    out.push('_');
                    if inner == c {
                        break;
                    }
                }
            }
            '$' if chars.peek() == Some(&'(') => {
                let mut depth = 0;
                out.push('_');
                for inner in chars.by_ref() {
                    out.push('_');
                    match inner {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '#' if previous.is_whitespace() => break,
            _ => out.push(c),
        }
        previous = c;
    }
    out
}

/// The program of each command a line sends to the background with a lone `&`.
fn background_commands(line: &str) -> Vec<String> {
    let code = code_only(line);
    let bytes = code.as_bytes();
    let mut programs = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'&' {
            continue;
        }
        let next = bytes.get(i + 1).copied();
        let before = i.checked_sub(1).map(|j| bytes[j]);
        // `&&`, `>&`, `&>`, `|&` are not the background operator.
        if next == Some(b'&') || next == Some(b'>') || matches!(before, Some(b'&' | b'>' | b'|')) {
            continue;
        }
        // A group sent to the background as a whole: its last command.
        let command = code[start..i].trim_end();
        let command = command
            .strip_suffix(['}', ')'])
            .map_or(command, |inner| inner.trim_end().trim_end_matches(';'));
        // The command starts after the last operator or grouping before it; in a pipeline the
        // last command is the job's own.
        let command = command.rsplit("&&").next().unwrap_or(command);
        let command = command
            .rsplit([';', '|', '(', ')', '{', '}'])
            .next()
            .unwrap_or(command);
        let program = command.split_whitespace().find(|word| {
            !word.contains('=') && !matches!(*word, "then" | "do" | "else" | "time" | "!" | "exec")
        });
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
    let cases: [(&str, &[&str]); 13] = [
        (
            r#"k -n "$ns" port-forward svc/dispatcher 18080:8080 >"$log" 2>&1 &"#,
            &["k"],
        ),
        (
            r#"A=1 B="$x" e2e/loadtest.sh >"$out/log" 2>&1 & pids+=($!)"#,
            &["e2e/loadtest.sh"],
        ),
        ("make a && make b || exit 1", &[]),
        ("# comment &", &[]),
        ("cd x; serve &", &["serve"]),
        ("{ f; } &", &["f"]),
        (r#"f "$(x)" &"#, &["f"]),
        ("a) f & ;;", &["f"]),
        ("cat file | f &", &["f"]),
        ("time f &", &["f"]),
        (r#"say "a & b"; cmd |& tee log"#, &[]),
        ("cmd # x & y", &[]),
        ("(cd x && serve) &", &["serve"]),
    ];
    for (line, programs) in cases {
        assert_eq!(background_commands(line), programs, "{line}");
    }
    let text = "k() { kubectl \"$@\"; }\nstart_all () {\n  :\n}\nfunction later {\n}\n\
                . \"$root/e2e/docker-engine.sh\"\n";
    let names = functions(text);
    for name in ["k", "start_all", "later", "docker_engine_start"] {
        assert!(names.contains(name), "{name} in {names:?}");
    }
}
