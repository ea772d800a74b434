//! The `codestorage` binary: parse the command line, run the server or a client command, map
//! the outcome to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use codestorage::cli::keys::{KeysCommand, TokenCommand};
use codestorage::cli::serve::ServeArgs;

#[derive(Parser)]
#[command(
    name = "codestorage",
    version,
    about = "A self-hosted git mirror: serves clones from its own store"
)]
struct Cli {
    /// Data directory (default: a per-user data directory).
    #[arg(long, global = true, env = "CODESTORAGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The running server, for client commands.
    #[arg(
        long,
        global = true,
        env = "CODESTORAGE_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Token for client commands [default: a short-lived admin token minted from the data
    /// directory's key].
    #[arg(long, global = true, env = "CODESTORAGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "CODESTORAGE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: codestorage::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Manage repositories on the running server.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Signing keys of the data directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Mint and revoke tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Back up the running server's data into a new directory (needs the admin scope).
    Backup {
        /// The new backup directory (absent or empty).
        #[arg(long)]
        to: PathBuf,
    },
    /// Rebuild a data directory (--data-dir, absent or empty) from a backup (server stopped).
    Restore {
        /// The backup directory (written by `codestorage backup`).
        #[arg(long)]
        from: PathBuf,
    },
    /// Print every ref of the data directory as text: repo, namespace, ref, value (tab-separated).
    ExportRefs {
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        /// Ask the running server (--server, admin scope) instead of reading --data-dir.
        #[arg(long)]
        from_server: bool,
    },
    /// Set refs from an `export-refs` listing (server stopped); changes nothing if any line fails.
    ImportRefs {
        /// The listing.
        file: PathBuf,
        /// First catalog the packs in objects/pack that no journal entry names (after a
        /// damaged journal was cut back or moved aside), so refs can point into them again.
        #[arg(long)]
        adopt_packs: bool,
    },
    /// Compact (and with --full, prune) stored packs on the running server now; returns once
    /// done and the replaced packs are deleted.
    Maintain {
        /// Only this repository [default: all].
        #[arg(long)]
        repo: Option<String>,
        /// Roll each repository into one pack per namespace group and drop unreachable objects
        /// older than the server's --prune-grace (else: geometric merge of the small packs).
        #[arg(long)]
        full: bool,
    },
    /// Verify the data directory (server stopped).
    Fsck {
        /// Rebuild the index from the files.
        #[arg(long)]
        rebuild: bool,
    },
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Create a repository; with --upstream it mirrors that git URL.
    Create {
        /// Repository name.
        name: String,
        /// Upstream git URL to mirror.
        #[arg(long)]
        upstream: Option<String>,
        /// Default branch of a local repository.
        #[arg(long)]
        default_branch: Option<String>,
    },
    /// Sync a mirror from its upstream now and wait for the result.
    Sync {
        /// Repository name.
        name: String,
    },
    /// List repositories.
    List,
    /// Show a repository and its sync state (JSON).
    Show {
        /// Repository name.
        name: String,
    },
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("codestorage");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/codestorage"),
        None => PathBuf::from("codestorage-data"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run(cli: Cli) -> Result<()> {
    let explicit_data_dir = cli.data_dir.is_some();
    let data_dir = cli.data_dir.unwrap_or_else(default_data_dir);
    match cli.command {
        Command::Backup { to } => {
            let token = match cli.token {
                Some(t) => Some(t),
                None => codestorage::cli::keys::admin_token(&data_dir).ok(),
            };
            let client = codestorage::cli::Client::new(&cli.server, token)?;
            let m = codestorage::cli::backup::backup(&client, &to).await?;
            println!(
                "backed up {} repositories, {} files, {} bytes into {}",
                m.repos.len(),
                m.files.len(),
                m.files.iter().map(|f| f.size).sum::<u64>(),
                to.display()
            );
        }
        Command::Restore { from } => {
            if !explicit_data_dir {
                anyhow::bail!("restore needs --data-dir NEW (a new, empty data directory)");
            }
            let target = data_dir.clone();
            let m = tokio::task::spawn_blocking(move || {
                codestorage::cli::backup::restore(&from, &target)
            })
            .await??;
            println!(
                "restored {} repositories, {} files into {}; the index is rebuilt at the first start",
                m.repos.len(),
                m.files.len(),
                data_dir.display()
            );
        }
        Command::ExportRefs { repo, from_server } => {
            let text = if from_server {
                let token = match cli.token {
                    Some(t) => Some(t),
                    None => codestorage::cli::keys::admin_token(&data_dir).ok(),
                };
                let client = codestorage::cli::Client::new(&cli.server, token)?;
                codestorage::cli::backup::export_refs_from_server(&client, repo.as_deref()).await?
            } else {
                tokio::task::spawn_blocking(move || {
                    codestorage::cli::backup::export_refs(&data_dir, repo.as_deref())
                })
                .await??
            };
            print!("{text}");
        }
        Command::ImportRefs { file, adopt_packs } => {
            let r = tokio::task::spawn_blocking(move || {
                codestorage::cli::backup::import_refs(&data_dir, &file, adopt_packs)
            })
            .await??;
            println!(
                "imported {} refs in {} transactions",
                r.refs, r.transactions
            );
        }
        Command::Serve(args) => {
            codestorage::cli::serve::run(&data_dir, *args, shutdown_signal()).await?;
        }
        Command::Keys { command } => codestorage::cli::keys::keys(&data_dir, command)?,
        Command::Token { command } => codestorage::cli::keys::token(&data_dir, command)?,
        Command::Repo { command } => {
            // Without --token, a short-lived admin token from the data directory's key, if
            // this machine has it; else the server will say what it needs.
            let token = match cli.token {
                Some(t) => Some(t),
                None => codestorage::cli::keys::admin_token(&data_dir).ok(),
            };
            let client = codestorage::cli::Client::new(&cli.server, token)?;
            match command {
                RepoCommand::Create {
                    name,
                    upstream,
                    default_branch,
                } => {
                    let v = client
                        .create(&name, upstream.as_deref(), default_branch.as_deref())
                        .await?;
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                RepoCommand::Sync { name } => {
                    let v = client.sync(&name, Duration::from_secs(3600)).await?;
                    println!("{}", serde_json::to_string_pretty(&v["sync"])?);
                }
                RepoCommand::List => {
                    for r in client.list().await? {
                        let upstream = r["base_repo"]["url"].as_str().unwrap_or("-");
                        println!(
                            "{}\t{}",
                            r["repo_id"].as_str().unwrap_or_default(),
                            upstream
                        );
                    }
                }
                RepoCommand::Show { name } => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&client.show(&name).await?)?
                    );
                }
            }
        }
        Command::Maintain { repo, full } => {
            let token = match cli.token {
                Some(t) => Some(t),
                None => codestorage::cli::keys::admin_token(&data_dir).ok(),
            };
            let client = codestorage::cli::Client::new(&cli.server, token)?;
            let v = client.maintain(repo.as_deref(), full).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Fsck { rebuild } => {
            let report = tokio::task::spawn_blocking(move || {
                codestorage_store::fsck::run(&data_dir, rebuild)
            })
            .await??;
            for line in &report.notes {
                println!("note: {line}");
            }
            for line in &report.problems {
                println!("error: {line}");
            }
            if !report.problems.is_empty() {
                anyhow::bail!("{} problem(s) found", report.problems.len());
            }
            println!(
                "ok: {} repositories, {} packs, {} refs checked",
                report.repos, report.packs, report.refs
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    codestorage::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Blocking work that ignored the interrupt must not hold the exit forever.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
