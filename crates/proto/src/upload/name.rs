//! The one name policy of uploads, applied by `up-cli` before it offers a
//! file (so a refusal is explained before anything is sent) and by `up-srv`
//! on every offer: a name must be safe to create on any common system and
//! must not be able to spoof how it looks in a listing.
//!
//! ```text
//! name      := component ("/" component)*      relative, at most 32 directories deep
//! refused   : empty, "/"-led, "." / "..", empty component, > 255 bytes a component,
//!             > 1024 bytes in all, C0/C1 controls, bidi controls (U+202E ...),
//!             < > : " | ? * \, a trailing "." or " ", Windows device names
//!             (CON, PRN, AUX, NUL, COM1-9, LPT1-9, with any extension)
//! ```
//!
//! Names are compared and stored in Unicode NFC ([`nfc`]), so the same name
//! typed on macOS (NFD) and Linux (NFC) is one file.

use unicode_normalization::UnicodeNormalization as _;

/// Longest accepted name component in bytes (common filesystem limit).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Longest accepted name in bytes, all components included; below the wire
/// limit so the whole stored path stays well under `PATH_MAX`.
pub const MAX_LEN: usize = 1024;

/// Deepest accepted directory nesting of a name.
pub const MAX_DEPTH: usize = 32;

/// Characters Windows forbids in names (besides controls and `/`).
pub const FORBIDDEN: &[char] = &['<', '>', ':', '"', '|', '?', '*', '\\'];

/// Why a name is refused; the message is shown to the user as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("empty name")]
    Empty,
    /// The name is longer than [`MAX_LEN`].
    #[error("name is {0} bytes long (limit {MAX_LEN})")]
    TooLong(usize),
    /// A component is longer than [`MAX_COMPONENT_LEN`].
    #[error("name component is {0} bytes long (limit {MAX_COMPONENT_LEN})")]
    ComponentTooLong(usize),
    /// The name nests more than [`MAX_DEPTH`] directories.
    #[error("name nests more than {MAX_DEPTH} directories")]
    TooDeep,
    /// The name starts with `/`.
    #[error("absolute names are not accepted (send a relative name)")]
    Absolute,
    /// The name holds an empty component (`a//b`, trailing `/`).
    #[error("empty path component (double or trailing '/')")]
    EmptyComponent,
    /// The name holds a `.` or `..` component.
    #[error("'{0}' components are not accepted")]
    DotComponent(&'static str),
    /// The name holds a C0/C1 control character.
    #[error("control character U+{0:04X} in name")]
    ControlChar(u32),
    /// The name holds a bidirectional control, which can make `a\u{202e}gpj.exe` look like `a.jpg`.
    #[error("bidirectional control U+{0:04X} in name (it can disguise the extension)")]
    BidiControl(u32),
    /// The name holds a character Windows forbids.
    #[error("'{0}' is not accepted in names (Windows forbids < > : \" | ? * \\)")]
    Forbidden(char),
    /// A component ends with a dot or a space, which Windows drops silently.
    #[error("'{0}' ends with a dot or a space")]
    TrailingDotOrSpace(String),
    /// A component is a Windows-reserved device name.
    #[error("'{0}' is a reserved device name on Windows")]
    Reserved(String),
}

/// The name in Unicode NFC, the form names are offered and stored in.
pub fn nfc(name: &str) -> String {
    name.nfc().collect()
}

/// True for the bidirectional formatting characters (ALM, LRM, RLM, the
/// embeddings, overrides and isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks `name` against the policy above.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    for c in name.chars() {
        if c.is_control() {
            return Err(NameError::ControlChar(u32::from(c)));
        }
        if is_bidi_control(c) {
            return Err(NameError::BidiControl(u32::from(c)));
        }
        if FORBIDDEN.contains(&c) {
            return Err(NameError::Forbidden(c));
        }
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    if name.split('/').count() > MAX_DEPTH + 1 {
        return Err(NameError::TooDeep);
    }
    for c in name.split('/') {
        match c {
            "" => return Err(NameError::EmptyComponent),
            "." => return Err(NameError::DotComponent(".")),
            ".." => return Err(NameError::DotComponent("..")),
            _ => {}
        }
        if c.len() > MAX_COMPONENT_LEN {
            return Err(NameError::ComponentTooLong(c.len()));
        }
        if c.ends_with('.') || c.ends_with(' ') {
            return Err(NameError::TrailingDotOrSpace(c.to_string()));
        }
        if is_windows_reserved(c) {
            return Err(NameError::Reserved(c.to_string()));
        }
    }
    Ok(())
}

/// True for CON, PRN, AUX, NUL, COM1-9 and LPT1-9, any case, with any extension
/// (Windows reserves `nul.txt` as well as `nul`).
fn is_windows_reserved(component: &str) -> bool {
    let stem = component.split('.').next().unwrap_or(component);
    let stem = stem.trim_end_matches(' ').to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        s if s.len() == 4 && (s.starts_with("COM") || s.starts_with("LPT")) => {
            matches!(s.as_bytes()[3], b'1'..=b'9')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_accepted() {
        for ok in [
            "a",
            "photo.jpg",
            "photos/sub/b.png",
            "é t é.txt",
            ".hidden",
            "a..b",
            "cone/x",
            "console.log",
            "COM0",
            "日本語.txt",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn reserved_names_cover_extensions_and_case() {
        for bad in [
            "CON",
            "con.txt",
            "Nul",
            "aux.tar.gz",
            "COM1",
            "lpt9.log",
            "dir/prn",
        ] {
            assert!(
                matches!(validate(bad), Err(NameError::Reserved(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn unsafe_characters_are_refused() {
        assert_eq!(
            validate("\u{202e}evil\u{202d}gpj.exe"),
            Err(NameError::BidiControl(0x202e))
        );
        assert_eq!(validate("a\u{85}b"), Err(NameError::ControlChar(0x85)));
        assert_eq!(validate("a\nb"), Err(NameError::ControlChar(0x0a)));
        for c in FORBIDDEN {
            assert_eq!(validate(&format!("a{c}b")), Err(NameError::Forbidden(*c)));
        }
        assert!(matches!(
            validate("dir./x"),
            Err(NameError::TrailingDotOrSpace(_))
        ));
        assert!(matches!(
            validate("x "),
            Err(NameError::TrailingDotOrSpace(_))
        ));
    }

    #[test]
    fn shapes_are_refused() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate("/etc/passwd"), Err(NameError::Absolute));
        assert_eq!(validate("a//b"), Err(NameError::EmptyComponent));
        assert_eq!(validate("a/"), Err(NameError::EmptyComponent));
        assert_eq!(validate("../x"), Err(NameError::DotComponent("..")));
        assert_eq!(validate("a/./x"), Err(NameError::DotComponent(".")));
        assert_eq!(
            validate(&"a/".repeat(40).add_leaf()),
            Err(NameError::TooDeep)
        );
        assert!(matches!(
            validate(&"x".repeat(256)),
            Err(NameError::ComponentTooLong(256))
        ));
        assert!(matches!(
            validate(&"x/".repeat(600)),
            Err(NameError::TooLong(_))
        ));
    }

    trait AddLeaf {
        fn add_leaf(self) -> String;
    }
    impl AddLeaf for String {
        fn add_leaf(self) -> String {
            self + "f"
        }
    }

    #[test]
    fn nfc_joins_decomposed_names() {
        assert_eq!(nfc("e\u{301}te\u{301}.txt"), "\u{e9}t\u{e9}.txt");
        assert_eq!(nfc("plain"), "plain");
    }
}
