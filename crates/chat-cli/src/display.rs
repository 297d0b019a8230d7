//! How server lines are shown: control characters escaped (never raw to the
//! terminal), optional local-time stamps, nicknames in colour on a terminal
//! (honouring `NO_COLOR`), and the prompt in the user's language.

use std::borrow::Cow;
use std::fmt::Write as _;

use proto::chat::{is_forbidden_char, HISTORY_PREFIX, PRIVATE_PREFIX};

/// The prompt shown in interactive mode by default.
pub const PROMPT: &str = "> ";

/// The tutorial's prompt, shown when the locale is Chinese.
pub const PROMPT_ZH: &str = "请输入您要发送的内容:";

/// The prompt for the locale in `LC_ALL`, `LC_MESSAGES` or `LANG` (the
/// first one set): Chinese (`zh…`) gets the tutorial's prompt.
pub fn prompt_for_locale(lookup: impl Fn(&str) -> Option<String>) -> &'static str {
    let locale = ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .filter_map(|k| lookup(k))
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    if locale.starts_with("zh") {
        PROMPT_ZH
    } else {
        PROMPT
    }
}

/// `line` with every character that could act on a terminal (see
/// [`proto::chat::is_forbidden_char`]) shown as a visible escape: C0
/// controls and DEL in caret notation (`^[`, `^?`), C1 and bidi controls as
/// `<U+202E>`. chat-srv never relays them; this keeps a hostile or foreign
/// server from painting the terminal.
pub fn escape_controls(line: &str) -> Cow<'_, str> {
    if !line.chars().any(is_forbidden_char) {
        return Cow::Borrowed(line);
    }
    let mut shown = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        match c {
            '\0'..='\x1f' if is_forbidden_char(c) => {
                shown.push('^');
                shown.push(char::from(b'@' + c as u8));
            }
            '\x7f' => shown.push_str("^?"),
            c if is_forbidden_char(c) => {
                let _ = write!(shown, "<U+{:04X}>", u32::from(c));
            }
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

/// How lines are decorated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// Prefix each line with the local time, `[HH:MM:SS]`.
    pub timestamps: bool,
    /// Show nicknames in colour (a terminal, and `NO_COLOR` unset).
    pub colour: bool,
}

impl Style {
    /// The line as it is shown: escaped, then stamped and coloured.
    pub fn render(&self, line: &str) -> String {
        let line = escape_controls(line);
        let mut shown = String::with_capacity(line.len() + 24);
        if self.timestamps {
            let _ = write!(shown, "[{}] ", chrono::Local::now().format("%H:%M:%S"));
        }
        match self.colour.then(|| split_nick(&line)).flatten() {
            Some((before, nick, after)) => {
                let colour = 31 + nick.bytes().map(u32::from).sum::<u32>() % 6;
                let _ = write!(shown, "{before}\x1b[{colour}m{nick}\x1b[0m{after}");
            }
            None => shown.push_str(&line),
        }
        shown
    }
}

/// Splits `NICK: X`, `[pm] NICK: X` and `~ [HH:MM] NICK: X` around the
/// nickname; other forms have none to colour.
fn split_nick(line: &str) -> Option<(&str, &str, &str)> {
    let start = if let Some(rest) = line.strip_prefix(PRIVATE_PREFIX) {
        line.len() - rest.len()
    } else if let Some(rest) = line.strip_prefix(HISTORY_PREFIX) {
        let after_time = rest.find("] ")? + 2;
        line.len() - rest.len() + after_time
    } else if line.starts_with(['*', '+', '!']) {
        return None;
    } else {
        0
    };
    let end = start + line.get(start..)?.find(": ")?;
    let nick = &line[start..end];
    if nick.is_empty() || nick.contains(' ') {
        return None;
    }
    Some((&line[..start], nick, &line[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_the_server_are_shown_escaped() {
        assert_eq!(escape_controls("plain\ttext 你好"), "plain\ttext 你好");
        assert_eq!(
            escape_controls("hi\r\x1b[2K* mallory left"),
            "hi^M^[[2K* mallory left"
        );
        assert_eq!(escape_controls("\0\x07\x7f"), "^@^G^?");
        assert_eq!(
            escape_controls("\u{9b}31m \u{202e}exe"),
            "<U+009B>31m <U+202E>exe"
        );
    }

    #[test]
    fn nicks_are_coloured_only_in_chat_forms() {
        let style = Style {
            timestamps: false,
            colour: true,
        };
        assert!(style.render("bob: hi").contains("\x1b["));
        assert!(style.render("[pm] bob: hi").starts_with("[pm] \x1b["));
        assert!(style
            .render("~ [10:00] bob: hi")
            .starts_with("~ [10:00] \x1b["));
        assert_eq!(style.render("* bob joined"), "* bob joined");
        assert_eq!(style.render("hi there,你好"), "hi there,你好");
        // Escaping comes first: a server cannot smuggle a colour code in.
        assert!(!Style::default().render("\x1b[31mx").contains('\x1b'));
    }

    #[test]
    fn the_prompt_follows_the_locale() {
        let env = |v: &'static str| move |k: &str| (k == "LANG").then(|| v.to_owned());
        assert_eq!(prompt_for_locale(env("zh_CN.UTF-8")), PROMPT_ZH);
        assert_eq!(prompt_for_locale(env("en_US.UTF-8")), PROMPT);
        assert_eq!(prompt_for_locale(|_| None), PROMPT);
    }
}
