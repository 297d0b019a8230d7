//! The interactive line editor: rustyline on its own thread, with history
//! kept between runs in the user's data directory and Tab completion of
//! `/commands` and of the nicknames in the room.
//!
//! Lines the user enters reach the async side through a bounded channel;
//! server lines go the other way through rustyline's external printer,
//! which prints them above the input line and redraws what was typed.

use std::path::PathBuf;

use proto::chat::{ClientLine, DEFAULT_HISTORY_REQUEST};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, ExternalPrinter, Helper};
use tokio::sync::mpsc;

use crate::state::Nicks;
use crate::Input;

/// The commands Tab completes.
const COMMANDS: [&str; 9] = [
    "/nick ", "/join ", "/rooms", "/who", "/msg ", "/history", "/help", "/quit", "q",
];

/// Lines kept in the history file.
const HISTORY_LINES: usize = 1000;

/// Completes `/commands` at the start of a line and nicknames elsewhere.
struct ChatHelper {
    nicks: Nicks,
}

impl Completer for ChatHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = line.get(..pos).unwrap_or(line);
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        let pair = |s: &str| Pair {
            display: s.trim_end().to_owned(),
            replacement: s.to_owned(),
        };
        if start == 0 && word.starts_with('/') {
            let lower = word.to_lowercase();
            let found = COMMANDS.iter().filter(|c| c.starts_with(&lower));
            return Ok((0, found.map(|c| pair(c)).collect()));
        }
        let lower = word.to_lowercase();
        let nicks = self
            .nicks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = nicks
            .iter()
            .filter(|n| n.to_lowercase().starts_with(&lower));
        Ok((start, found.map(|n| pair(n)).collect()))
    }
}

impl Hinter for ChatHelper {
    type Hint = String;
}
impl Highlighter for ChatHelper {}
impl Validator for ChatHelper {}
impl Helper for ChatHelper {}

/// Where the history is kept: `$XDG_DATA_HOME/chat-cli/history`, else
/// `~/.local/share/chat-cli/history`.
pub fn history_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("chat-cli").join("history"))
}

/// Prints server lines above the input line.
pub type Printer = Box<dyn ExternalPrinter + Send>;

/// Starts the editor thread; returns the user's lines and the printer.
pub fn spawn(
    prompt: &'static str,
    nicks: Nicks,
) -> Result<(mpsc::Receiver<Input>, Printer), ReadlineError> {
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_LINES)?
        .auto_add_history(false)
        .build();
    let mut editor: Editor<ChatHelper, FileHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(ChatHelper { nicks }));
    let printer: Printer = Box::new(editor.create_external_printer()?);
    let path = history_path();
    if let Some(path) = &path {
        // A first run has no history yet.
        let _ = editor.load_history(path);
    }
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || edit(editor, prompt, path, tx));
    Ok((rx, printer))
}

fn edit(
    mut editor: Editor<ChatHelper, FileHistory>,
    prompt: &str,
    path: Option<PathBuf>,
    tx: mpsc::Sender<Input>,
) {
    loop {
        let input = match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                    if let Some(path) = &path {
                        save_history(&mut editor, path);
                    }
                }
                Input::Line(line)
            }
            // Ctrl-C and Ctrl-D leave, like `q`.
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => Input::Eof,
            Err(e) => Input::Failed(std::io::Error::other(e)),
        };
        let last = match &input {
            Input::Line(line) => ClientLine::parse(line) == Ok(ClientLine::Quit),
            Input::Eof | Input::Failed(_) => true,
        };
        if tx.blocking_send(input).is_err() || last {
            break;
        }
    }
}

fn save_history(editor: &mut Editor<ChatHelper, FileHistory>, path: &PathBuf) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(path);
}

/// The `/history` request chat-cli sends after joining.
pub fn history_request() -> String {
    format!("/history {DEFAULT_HISTORY_REQUEST}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustyline::history::DefaultHistory;

    fn complete(line: &str, nicks: &[&str]) -> (usize, Vec<String>) {
        let helper = ChatHelper {
            nicks: Nicks::default(),
        };
        helper
            .nicks
            .lock()
            .expect("fresh lock")
            .extend(nicks.iter().map(|n| n.to_string()));
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        let (start, found) = helper
            .complete(line, line.len(), &ctx)
            .expect("completion never fails");
        (start, found.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn tab_completes_commands_and_nicknames() {
        assert_eq!(complete("/hi", &[]), (0, vec!["/history".to_owned()]));
        assert_eq!(complete("/J", &[]), (0, vec!["/join ".to_owned()]));
        assert_eq!(
            complete("hi AL", &["alice", "bob", "Alma"]),
            (3, vec!["Alma".to_owned(), "alice".to_owned()])
        );
        assert_eq!(
            complete("/msg b", &["alice", "bob"]),
            (5, vec!["bob".to_owned()])
        );
    }
}
