//! Containers for secret values and tokens that cannot be logged by accident.

use std::fmt;

/// A value that must never reach a log, an error message or stdout.
///
/// `Debug` and `Display` print `<redacted>`; the value is only reachable through
/// [`Secret::expose`], which makes every use of it greppable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value so that it cannot be printed.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Gives access to the value; call sites are where secrets leave the redacting type.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value, for handing it to its one legitimate consumer.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Secret file contents.
pub type SecretBytes = Secret<Vec<u8>>;

/// A secret string such as a service-account token or a JSON document holding tokens.
pub type SecretString = Secret<String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(<redacted>)");
        assert_eq!(secret.expose(), "hunter2");
    }
}
