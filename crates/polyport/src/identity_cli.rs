//! `polyport users …`, `polyport keys …` (against a running server, as an admin) and
//! `polyport admin create` (on a stopped server's data directory, to bootstrap the first
//! admin without the network).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;

use crate::cli::{ServerArgs, call};

/// A password from `--password-stdin` (one line) or the flag.
#[derive(clap::Args, Debug)]
pub(crate) struct NewPassword {
    /// Read the new password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The new password (visible in the process list: prefer --password-stdin).
    #[arg(
        long = "new-password",
        env = "POLYPORT_NEW_PASSWORD",
        hide_env_values = true
    )]
    new_password: Option<String>,
}

impl NewPassword {
    fn read(&self) -> anyhow::Result<Option<String>> {
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let p = line.trim_end_matches(['\r', '\n']).to_string();
            if p.is_empty() {
                bail!("no password on standard input");
            }
            return Ok(Some(p));
        }
        Ok(self.new_password.clone())
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum UsersCmd {
    /// List users (from polyport.toml and stored).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create a stored user.
    Add {
        name: String,
        /// `user` or `admin`.
        #[arg(long, default_value = "user")]
        role: String,
        #[command(flatten)]
        password: NewPassword,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Change a stored user's password and/or role.
    Set {
        name: String,
        /// `user` or `admin`.
        #[arg(long)]
        role: Option<String>,
        #[command(flatten)]
        password: NewPassword,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a stored user.
    Rm {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the argon2id hash of a password (from standard input), for
    /// `[auth] users = { name = { password_hash = "…" } }`.
    Hash,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum KeysCmd {
    /// List API keys (never their secrets).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Mint an API key and print it (the only time it is shown).
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// `user` or `admin`.
        #[arg(long, default_value = "user")]
        role: String,
        /// Narrow the key to these (read, write, publish, subscribe, admin).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// The user the key acts as.
        #[arg(long)]
        user_id: Option<String>,
        /// Lifetime: seconds, or with a unit (90m, 12h, 30d).
        #[arg(long)]
        expires_in: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a key: it stops working at once on every protocol.
    Revoke {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum AdminCmd {
    /// Create (or reset) an admin in a data directory while no server runs on it.
    Create {
        name: String,
        #[command(flatten)]
        password: NewPassword,
        /// Configuration file (default: ./polyport.toml when present).
        #[arg(long, env = "POLYPORT_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory.
        #[arg(long, env = "POLYPORT_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The PostgreSQL store instead of the data directory's (as `serve --store`).
        #[arg(long, env = "POLYPORT_STORE")]
        store: Option<String>,
        /// Its schema (as `serve --store-schema`).
        #[arg(long, env = "POLYPORT_STORE_SCHEMA")]
        store_schema: Option<String>,
    },
}

fn seconds(s: &str) -> anyhow::Result<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .with_context(|| format!("'{s}' is not a duration"))?;
    Ok(n * match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("'{s}': use s, m, h or d"),
    })
}

pub(crate) async fn users(cmd: UsersCmd) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::List { server } => {
            let v = call(
                server
                    .client()?
                    .get(format!("{}/api/auth/users", server.base())),
            )
            .await?;
            for u in v["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<6} {}",
                    u["name"].as_str().unwrap_or(""),
                    u["role"].as_str().unwrap_or(""),
                    u["source"].as_str().unwrap_or("")
                );
            }
        }
        UsersCmd::Add {
            name,
            role,
            password,
            server,
        } => {
            let Some(p) = password.read()? else {
                bail!("a new user needs a password: --password-stdin or --new-password");
            };
            let body = json!({"name": name, "password": p, "role": role});
            let v = call(
                server
                    .client()?
                    .post(format!("{}/api/auth/users", server.base()))
                    .json(&body),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        UsersCmd::Set {
            name,
            role,
            password,
            server,
        } => {
            let body = json!({"password": password.read()?, "role": role});
            let v = call(
                server
                    .client()?
                    .patch(format!("{}/api/auth/users/{name}", server.base()))
                    .json(&body),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        UsersCmd::Rm { name, server } => {
            call(
                server
                    .client()?
                    .delete(format!("{}/api/auth/users/{name}", server.base())),
            )
            .await?;
        }
        UsersCmd::Hash => {
            let p = NewPassword {
                password_stdin: true,
                new_password: None,
            }
            .read()?
            .unwrap_or_default();
            println!("{}", polyport_core::auth::hash_password(&p)?);
        }
    }
    Ok(())
}

pub(crate) async fn keys(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::List { server } => {
            let v = call(
                server
                    .client()?
                    .get(format!("{}/api/auth/keys", server.base())),
            )
            .await?;
            for k in v["items"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<6} {}  scopes={} expires_at={}",
                    k["id"].as_str().unwrap_or(""),
                    k["role"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or(""),
                    k["scopes"],
                    k["expires_at"],
                );
            }
        }
        KeysCmd::Create {
            name,
            role,
            scopes,
            user_id,
            expires_in,
            server,
        } => {
            let body = json!({
                "name": name,
                "role": role,
                "scopes": (!scopes.is_empty()).then_some(scopes),
                "user": user_id,
                "expires_in": expires_in.as_deref().map(seconds).transpose()?,
            });
            let v = call(
                server
                    .client()?
                    .post(format!("{}/api/auth/keys", server.base()))
                    .json(&body),
            )
            .await?;
            eprintln!("API key {} (store it now: it is not shown again):", v["id"]);
            println!("{}", v["key"].as_str().unwrap_or(""));
        }
        KeysCmd::Revoke { id, server } => {
            call(
                server
                    .client()?
                    .delete(format!("{}/api/auth/keys/{id}", server.base())),
            )
            .await?;
        }
    }
    Ok(())
}

pub(crate) async fn admin(cmd: AdminCmd) -> anyhow::Result<()> {
    let AdminCmd::Create {
        name,
        password,
        config,
        data_dir,
        store,
        store_schema,
    } = cmd;
    let Some(p) = password.read()? else {
        bail!("give the admin a password: --password-stdin or --new-password");
    };
    let mut cfg = crate::config::Config::load(config.as_deref())?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(s) = store {
        cfg.cluster.store = Some(s);
    }
    if let Some(s) = store_schema {
        cfg.cluster.schema = s;
    }
    let running = std::fs::read(cfg.data_dir.join("listeners.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["http"].as_str().map(str::to_string));
    if let Some(addr) = running
        && reqwest::get(format!("http://{addr}/healthz")).await.is_ok()
    {
        bail!(
            "a server is running on {} ({addr}): add the admin through it \
             (`polyport users add {name} --role admin`) or stop it first",
            cfg.data_dir.display()
        );
    }
    let hub = crate::serve::open_hub(&cfg)?;
    hub.load_identities().await?;
    hub.bootstrap_admin(&name, &p).await?;
    hub.shutdown().await;
    eprintln!("admin '{name}' is ready in {}", cfg.data_dir.display());
    Ok(())
}
