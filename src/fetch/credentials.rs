//! Credentials for package hosts, as uv and pip find them, for the wheels comfix downloads itself:
//! the user and password of an index URL in the environment (`UV_DEFAULT_INDEX`, `UV_INDEX`,
//! `UV_INDEX_URL`, `UV_EXTRA_INDEX_URL`, `PIP_INDEX_URL`, `PIP_EXTRA_INDEX_URL`) on the same host,
//! else the `.netrc` entry of the host (`NETRC`, else `~/.netrc`). Never written anywhere: a lock's
//! URLs carry no credentials.

use std::path::PathBuf;

use url::Url;

use super::http::Auth;

/// The index variables that may carry credentials, as uv and pip read them.
const INDEX_VARS: &[&str] = &[
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
];

/// The credentials for `url`'s host, when the environment or `.netrc` has some.
pub fn for_host(url: &Url, env: &impl Fn(&str) -> Option<String>) -> Option<Auth> {
    from_index_urls(url, env).or_else(|| from_netrc(url, env))
}

fn same_host(a: &Url, b: &Url) -> bool {
    a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// `user:password@` of an index URL on the same host (`UV_INDEX` may hold `name=url` entries,
/// several per variable, separated by spaces).
fn from_index_urls(url: &Url, env: &impl Fn(&str) -> Option<String>) -> Option<Auth> {
    for var in INDEX_VARS {
        let Some(value) = env(var) else {
            continue;
        };
        for entry in value.split_whitespace() {
            let text = entry.split_once('=').map_or(entry, |(_, u)| u);
            let Ok(index) = Url::parse(text) else {
                continue;
            };
            if index.username().is_empty() || !same_host(&index, url) {
                continue;
            }
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let user = decode(index.username());
            let password = decode(index.password().unwrap_or_default());
            return Some(Auth::basic(url, &user, &password, var));
        }
    }
    None
}

fn from_netrc(url: &Url, env: &impl Fn(&str) -> Option<String>) -> Option<Auth> {
    let path = env("NETRC")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".netrc")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let (user, password) = netrc_entry(&text, url.host_str()?)?;
    Some(Auth::basic(url, &user, &password, "NETRC"))
}

/// The login and password `text` (a `.netrc`) gives `host`: its `machine` entry, else `default`.
fn netrc_entry(text: &str, host: &str) -> Option<(String, String)> {
    let mut tokens = text.split_whitespace();
    let mut found: Option<(String, String)> = None;
    let mut default: Option<(String, String)> = None;
    // Which entry the tokens belong to now: Some(true) the host's, Some(false) another's.
    let mut current: Option<bool> = None;
    let mut is_default = false;
    let mut entry = (String::new(), String::new());
    let mut finish = |current: Option<bool>, is_default: bool, entry: &mut (String, String)| {
        let taken = std::mem::take(entry);
        if current == Some(true) && found.is_none() {
            found = Some(taken);
        } else if is_default && default.is_none() {
            default = Some(taken);
        }
    };
    while let Some(token) = tokens.next() {
        match token {
            "machine" => {
                finish(current, is_default, &mut entry);
                is_default = false;
                current = Some(tokens.next() == Some(host));
            }
            "default" => {
                finish(current, is_default, &mut entry);
                is_default = true;
                current = Some(false);
            }
            "login" => entry.0 = tokens.next().unwrap_or_default().to_string(),
            "password" => entry.1 = tokens.next().unwrap_or_default().to_string(),
            "account" => {
                tokens.next();
            }
            // A macro runs to the next empty line; nothing comfix needs comes after one.
            "macdef" => break,
            _ => {}
        }
    }
    finish(current, is_default, &mut entry);
    found.or(default).filter(|(login, _)| !login.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_entries_are_found_by_host_else_default() {
        let text = "machine other.example login a password b\n\
                    machine pkgs.example.com\n  login alice\n  password s3cret\n\
                    default login anon password guest\n";
        assert_eq!(
            netrc_entry(text, "pkgs.example.com"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            netrc_entry(text, "elsewhere.example"),
            Some(("anon".into(), "guest".into()))
        );
        assert_eq!(netrc_entry("machine x login y password z", "w"), None);
    }

    #[test]
    fn index_urls_give_their_credentials_to_their_host_only() {
        let env = |k: &str| match k {
            "UV_INDEX" => Some("team=https://bob:p%40ss@pkgs.example.com/simple".to_string()),
            "HOME" => Some("/nonexistent".to_string()),
            _ => None,
        };
        let wheel = Url::parse("https://pkgs.example.com/files/a.whl").unwrap();
        let auth = for_host(&wheel, &env).unwrap();
        assert_eq!(auth.var, "UV_INDEX");
        let other = Url::parse("https://files.pythonhosted.org/a.whl").unwrap();
        assert!(for_host(&other, &env).is_none());
    }
}
