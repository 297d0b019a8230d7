//! ngircd, the IRC server the chat fan-out is measured beside, started on a free
//! loopback port with a configuration written into `target/bench/ngircd/`.
//!
//! Its defaults would measure its flood control instead of its fan-out: each
//! command adds a penalty second and a client waits once it has a few, so
//! `MaxPenaltyTime = 0` turns that off; connection, per-IP and join limits are
//! lifted; DNS and ident lookups at connect are off (nothing to look up on loopback).

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result};

use super::procfs;
use crate::install;
use crate::service::Service;

/// The channel `loadgen fanout --mode irc` joins; predefined so it exists up front.
const CHANNEL: &str = "#fanout";

/// Starts ngircd (installing Debian's package if allowed); `Err` is the reason to
/// skip the IRC peer, one line.
pub fn start(dir: &Path, install_missing: bool) -> Result<Service, String> {
    let ngircd = if install_missing {
        install::tool("ngircd", "ngircd", "the IRC fan-out peer")?
    } else {
        install::on_path("ngircd").ok_or("ngircd not installed (the full bench installs it)")?
    };
    configure_and_start(&ngircd, dir).map_err(|e| format!("{e:#}"))
}

fn configure_and_start(ngircd: &Path, dir: &Path) -> Result<Service> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let addr = procfs::free_addr()?;
    let config = dir.join("ngircd.conf");
    let text = format!(
        "[Global]\nName = irc.bench\nInfo = sockchat bench peer\nListen = 127.0.0.1\n\
         Ports = {port}\nMotdPhrase = bench\nAdminInfo1 = sockchat bench\n\
         AdminInfo2 = loopback\nAdminEMail = bench@localhost\n\
         [Limits]\nMaxConnections = 0\nMaxConnectionsIP = 0\nMaxJoins = 0\n\
         MaxPenaltyTime = 0\nMaxListSize = 100000\nPingTimeout = 600\nPongTimeout = 60\n\
         [Options]\nDNS = no\nIdent = no\nPAM = no\n\
         [Channel]\nName = {CHANNEL}\nModes = +n\n",
        port = addr.port(),
    );
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let log_path = dir.join("ngircd.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = procfs::with_raised_nofile(ngircd);
    cmd.args(["--nodaemon", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log);
    Service::start("ngircd", cmd, addr)
}
