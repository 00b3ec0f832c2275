//! `comfix completions` and `comfix man`: the shell's conventions, generated from the same clap
//! definitions the parser uses, so they cannot drift from it.

use std::path::PathBuf;

use clap::{Args, CommandFactory, ValueEnum};

use super::{Cli, Context, Outcome};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
    Elvish,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write a page per command (`comfix.1`, `comfix-realize.1`, …) into this directory instead of
    /// printing `comfix.1`
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Version ids for bash: after a command that takes one (`_comfix_id_commands`, from the clap
/// definitions), a word that is not an option, nor an option's value, completes to the spec files
/// under `versions/` and `specs/` of the current directory (where `comfix realize <ID>` looks).
const BASH_IDS: &str = r#"
_comfix_version_ids() {
    local dir f
    for dir in versions specs; do
        for f in "$dir"/*.json; do
            [[ -e "$f" ]] || continue
            f="${f##*/}"
            f="${f%.json}"
            [[ "$f" == *.lock ]] || printf '%s\n' "$f"
        done
    done
}

_comfix_with_ids() {
    _comfix "$@"
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" path="" i
    [[ "$cur" == -* || "$prev" == -* ]] && return 0
    for (( i = 1; i < COMP_CWORD; i++ )); do
        [[ "${COMP_WORDS[i]}" == -* ]] && break
        path="${path:+$path:}${COMP_WORDS[i]}"
        case " $_comfix_id_commands " in
            *" $path "*)
                # Keep the subcommands clap offered (`add node`), not its options' placeholders.
                local words=() word
                for word in "${COMPREPLY[@]}"; do
                    [[ "$word" == [a-z]* ]] && words+=("$word")
                done
                COMPREPLY=("${words[@]}" $(compgen -W "$(_comfix_version_ids)" -- "$cur"))
                return 0
                ;;
        esac
    done
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _comfix_with_ids -o nosort -o bashdefault -o default comfix
else
    complete -F _comfix_with_ids -o bashdefault -o default comfix
fi
"#;

/// The commands (`realize`, `spec:check`, …) that take a version id as a positional argument.
fn id_commands(command: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for sub in command.get_subcommands() {
        let path = format!("{prefix}{}", sub.get_name());
        // A positional named `ID`, or one its help calls a version id (`diff`'s A and B).
        let takes_id = sub.get_positionals().any(|arg| {
            let help = arg.get_help().map(|h| h.to_string().to_lowercase());
            arg.get_value_names()
                .is_some_and(|names| names.iter().any(|n| *n == "ID" || *n == "IDS"))
                || matches!(arg.get_id().as_str(), "id" | "ids")
                || help.is_some_and(|h| h.contains("version id"))
        });
        // `init`'s id is a new one: nothing to complete.
        if takes_id && path != "init" {
            out.push(path.clone());
        }
        id_commands(sub, &format!("{path}:"), out);
    }
}

/// Version ids for zsh: the spec files under `versions/` and `specs/` (not the locks).
const ZSH_IDS: &str = r#"
_comfix_version_ids() {
    local -a ids
    ids=(versions/*.json(N:t:r) specs/*.json(N:t:r))
    ids=(${ids:#*.lock})
    _describe -t version-ids 'version id' ids
}
"#;

/// zsh's script with every positional `id`/`ids` argument completed by `_comfix_version_ids`
/// (clap's script gives them `_default`, file names).
fn zsh_with_ids(script: &str) -> String {
    let mut out = String::with_capacity(script.len() + ZSH_IDS.len());
    for (i, line) in script.lines().enumerate() {
        let trimmed = line.trim_start();
        let positional_id = ["':id -- ", "'::id -- ", "'*::ids -- ", "'*:ids -- "]
            .iter()
            .any(|p| trimmed.starts_with(p));
        match line.rfind(":_default'") {
            Some(at) if positional_id => {
                out.push_str(&line[..at]);
                out.push_str(":_comfix_version_ids'");
                out.push_str(&line[at + ":_default'".len()..]);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
        if i == 0 {
            // After `#compdef comfix`: defined before the script runs `_comfix`.
            out.push_str(ZSH_IDS);
        }
    }
    out
}

/// Version ids for fish: after each command that takes one (`spec:check` is `spec check`).
fn fish_ids(commands: &[String]) -> String {
    let mut out = String::from(
        "\nfunction __comfix_version_ids\n    for f in versions/*.json specs/*.json\n        set -l id (path change-extension '' (path basename $f))\n        string match -q -- '*.lock' $id; or echo $id\n    end\nend\n",
    );
    for path in commands {
        let mut words = path.split(':');
        let first = words.next().unwrap_or_default();
        let mut condition = format!("__fish_comfix_using_subcommand {first}");
        for word in words {
            condition.push_str(&format!("; and __fish_seen_subcommand_from {word}"));
        }
        out.push_str(&format!(
            "complete -c comfix -n \"{condition}\" -f -a \"(__comfix_version_ids)\" -d 'version id'\n"
        ));
    }
    out
}

/// Print the completion script of `args.shell` (bash's, zsh's and fish's complete version ids).
pub fn completions(args: CompletionsArgs) -> anyhow::Result<Outcome> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    match args.shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut command, "comfix", &mut out);
            let mut commands = Vec::new();
            id_commands(&command, "", &mut commands);
            let list = format!("\n_comfix_id_commands='{}'\n", commands.join(" "));
            out.extend_from_slice(list.as_bytes());
            out.extend_from_slice(BASH_IDS.as_bytes());
        }
        Shell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut command, "comfix", &mut out);
            out = zsh_with_ids(&String::from_utf8_lossy(&out)).into_bytes();
        }
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut command, "comfix", &mut out);
            let mut commands = Vec::new();
            id_commands(&command, "", &mut commands);
            out.extend_from_slice(fish_ids(&commands).as_bytes());
        }
        Shell::Powershell => clap_complete::generate(
            clap_complete::Shell::PowerShell,
            &mut command,
            "comfix",
            &mut out,
        ),
        Shell::Elvish => clap_complete::generate(
            clap_complete::Shell::Elvish,
            &mut command,
            "comfix",
            &mut out,
        ),
    }
    use std::io::Write;
    std::io::stdout().write_all(&out)?;
    Ok(Outcome::Success)
}

/// Print `comfix.1`, or write a page per command into `args.dir`.
pub fn man(args: ManArgs, context: &Context) -> anyhow::Result<Outcome> {
    let command = Cli::command();
    let Some(dir) = args.dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(command).render(&mut out)?;
        use std::io::Write;
        std::io::stdout().write_all(&out)?;
        return Ok(Outcome::Success);
    };
    std::fs::create_dir_all(&dir)?;
    clap_mangen::generate_to(command, &dir)?;
    let mut pages: Vec<String> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".1"))
        .collect();
    pages.sort();
    if context.json {
        context.print_json(&serde_json::json!({ "dir": dir, "pages": pages }))?;
    } else {
        for page in &pages {
            println!("{}", dir.join(page).display());
        }
    }
    Ok(Outcome::Success)
}
