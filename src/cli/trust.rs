//! Keys and trust: `comfix key generate`, `--sign-key`, `--trusted-key`, `--no-check-sigs`, and
//! the config file (`$COMFIX_CONFIG`, else `$XDG_CONFIG_HOME/comfix/config.toml`, else
//! `~/.config/comfix/config.toml`) with `substituters` and `trusted-keys`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Deserialize;

use super::{Context, Outcome};
use crate::sign::{PublicKey, SecretKey, Trust};

/// The config file's settings (every one optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub substituters: Vec<String>,
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// This machine's torch backend (`auto`, `cpu`, `cu128`, …), as `--torch-backend`.
    #[serde(default)]
    pub torch_backend: Option<String>,
    /// The backend's index (`{backend}` replaced), as `--torch-index`.
    #[serde(default)]
    pub torch_index: Option<String>,
}

impl Config {
    pub fn path() -> Option<PathBuf> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("COMFIX_CONFIG")
            .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("comfix/config.toml")))
            .or_else(|| var("HOME").map(|h| h.join(".config/comfix/config.toml")))
    }

    /// Where `key generate` writes keys by default: `keys/` beside the config file.
    pub fn keys_dir() -> Option<PathBuf> {
        Config::path().and_then(|p| p.parent().map(|d| d.join("keys")))
    }

    /// The config file, or the defaults when there is none.
    pub fn load() -> anyhow::Result<Config> {
        let Some(path) = Config::path() else {
            return Ok(Config::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => anyhow::bail!("cannot read the config file `{}`: {e}", path.display()),
        };
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file `{}`: {e}", path.display()))
    }
}

/// Binary caches asked before fetching, and the keys what they give must be signed by.
#[derive(Debug, Clone, Args)]
pub struct SubstituteArgs {
    /// A binary cache asked for a path before it is fetched (`s3://BUCKET/PREFIX`,
    /// `https://HOST/PATH`, `file://DIR` or `DIR`; repeatable; space-separated in the variable; the config file's `substituters`
    /// too)
    #[arg(
        long = "substituter",
        value_name = "URL",
        env = "COMFIX_SUBSTITUTERS",
        value_delimiter = ' '
    )]
    pub substituters: Vec<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Which keys paths from caches and archives must be signed by.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// A public key (`NAME:BASE64`) whose signatures are trusted (repeatable; space-separated in
    /// the variable; the config file's `trusted-keys` too)
    #[arg(
        long = "trusted-key",
        value_name = "KEY",
        env = "COMFIX_TRUSTED_KEYS",
        value_delimiter = ' '
    )]
    pub trusted_keys: Vec<String>,
    /// Take paths that no trusted key signed (their digests are still checked)
    #[arg(long)]
    pub no_check_sigs: bool,
}

impl TrustArgs {
    pub fn trust(&self, config: &Config) -> anyhow::Result<Trust> {
        let keys = self
            .trusted_keys
            .iter()
            .chain(&config.trusted_keys)
            .filter(|k| !k.is_empty())
            .map(|k| PublicKey::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trust {
            keys,
            accept_unsigned: self.no_check_sigs,
        })
    }
}

/// Read a secret key file (`comfix key generate` wrote it).
pub fn secret_key(path: &std::path::Path) -> anyhow::Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the key `{}`: {e}", path.display()))?;
    Ok(SecretKey::parse(&text)?)
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a signing key pair: `<DIR>/<NAME>.secret` (private, mode 600) and `<NAME>.public`;
    /// prints the public key
    #[command(
        after_help = "Examples:\n  comfix key generate --name team-cache-1\n  comfix store copy --to /mnt/cache wan22 --sign-key ~/.config/comfix/keys/team-cache-1.secret"
    )]
    Generate {
        /// The key's name, part of every signature it makes
        #[arg(long)]
        name: String,
        /// Where to write the files [default: comfix's config directory,
        /// $XDG_CONFIG_HOME/comfix/keys (~/.config/comfix/keys)]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

pub fn key(command: KeyCommand, context: &Context) -> anyhow::Result<Outcome> {
    let KeyCommand::Generate { name, dir } = command;
    crate::store::check_name(&name)
        .map_err(|reason| anyhow::anyhow!("bad key name `{name}`: {reason}"))?;
    let key = SecretKey::generate(&name)?;
    let dir = match dir {
        Some(dir) => dir,
        None => Config::keys_dir().ok_or_else(|| {
            anyhow::anyhow!(
                "no config directory (neither $XDG_CONFIG_HOME nor $HOME is set): pass `--dir`"
            )
        })?,
    };
    std::fs::create_dir_all(&dir)?;
    let secret = dir.join(format!("{name}.secret"));
    let public = dir.join(format!("{name}.public"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .map_err(|e| anyhow::anyhow!("cannot create `{}`: {e}", secret.display()))?;
        writeln!(file, "{}", key.to_text())?;
    }
    let text = key.public().to_text();
    std::fs::write(&public, format!("{text}\n"))?;
    tracing::info!(
        "wrote the secret key to `{}` (0600: keep it private) and the public key to `{}`",
        secret.display(),
        public.display()
    );
    if context.json {
        context.print_json(&serde_json::json!({
            "public_key": text, "secret_file": secret, "public_file": public,
        }))?;
    } else {
        println!("{text}");
    }
    Ok(Outcome::Success)
}
