//! The admin token (`--admin-token-file`): read once at start, compared in
//! constant time, and never written anywhere: not in a log line, not in an
//! error, not in its own `Debug`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::AdminError;

/// The bearer token requests must present (`Authorization: Bearer …`).
#[derive(Clone)]
pub(super) struct Token(Arc<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the token from `file`: its contents, without surrounding
    /// whitespace (the newline an editor adds). Refuses an empty one, and one
    /// that could not travel in a header (a control character, a space inside).
    pub(super) fn load(file: &Path) -> Result<Token, AdminError> {
        let refuse = |why: String| AdminError::Token {
            file: file.to_owned(),
            why,
        };
        let bytes = std::fs::read(file).map_err(|e| refuse(e.to_string()))?;
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err(refuse("the file holds no token".into()));
        }
        if !token.iter().all(u8::is_ascii_graphic) {
            return Err(refuse(
                "the token must be printable ASCII without spaces".into(),
            ));
        }
        Ok(Token(token.into()))
    }

    /// Whether an `Authorization` header's value presents this token. The
    /// comparison takes the same time wherever the two differ.
    pub(super) fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|value| value.strip_prefix(b"Bearer ")) else {
            return false;
        };
        bool::from(presented.trim_ascii().ct_eq(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_in(contents: &[u8]) -> Result<Token, AdminError> {
        let dir = std::env::temp_dir().join(format!("duplex-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join(format!("token-{}", contents.len()));
        std::fs::write(&file, contents).expect("write token");
        let token = Token::load(&file);
        let _ = std::fs::remove_file(&file);
        token
    }

    #[test]
    fn a_token_is_admitted_only_as_a_bearer_and_never_shown() {
        let token = token_in(b"s3cret-token\n").expect("a token");
        assert!(token.admits(Some(b"Bearer s3cret-token")));
        for wrong in [
            &b"Bearer s3cret-tokem"[..],
            b"Bearer s3cret",
            b"Basic s3cret-token",
            b"s3cret-token",
            b"Bearer ",
        ] {
            assert!(!token.admits(Some(wrong)), "{wrong:?}");
        }
        assert!(!token.admits(None));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn an_empty_or_unprintable_token_is_refused_without_its_contents() {
        for contents in [&b" \n"[..], b"two s3crets", b"tab\ts3cret"] {
            let error = token_in(contents).expect_err("refused").to_string();
            assert!(!error.contains("s3cret"), "{error}");
        }
    }
}
