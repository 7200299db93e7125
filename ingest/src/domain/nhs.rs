//! NHS numbers: ten digits, the last a modulus-11 check digit. The number identifies a
//! person, so its `Debug` and `Display` never show it.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct NhsNumber(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NhsNumberError {
    #[error("an NHS number has exactly 10 digits (spaces and hyphens allowed)")]
    Length,
    #[error("the NHS number's check digit does not match")]
    CheckDigit,
}

impl NhsNumber {
    pub fn parse(input: &str) -> Result<Self, NhsNumberError> {
        let digits: Vec<u32> = input
            .chars()
            .filter(|c| !matches!(c, ' ' | '-'))
            .map(|c| c.to_digit(10).ok_or(NhsNumberError::Length))
            .collect::<Result<_, _>>()?;
        if digits.len() != 10 {
            return Err(NhsNumberError::Length);
        }
        let sum: u32 = digits[..9]
            .iter()
            .zip((2..=10).rev())
            .map(|(d, w)| d * w)
            .sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => return Err(NhsNumberError::CheckDigit),
            c => c,
        };
        if check != digits[9] {
            return Err(NhsNumberError::CheckDigit);
        }
        Ok(Self(digits.iter().map(|d| d.to_string()).collect()))
    }

    /// The ten digits, for storage only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(<redacted>)")
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted NHS number>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_number_with_spaces_is_accepted() {
        // 943 476 5919 is the NHS's published test number.
        let n = NhsNumber::parse("943 476 5919").expect("valid");
        assert_eq!(n.expose(), "9434765919");
    }

    #[test]
    fn a_wrong_check_digit_is_refused() {
        assert_eq!(
            NhsNumber::parse("9434765918"),
            Err(NhsNumberError::CheckDigit)
        );
    }

    #[test]
    fn a_remainder_needing_check_digit_ten_is_never_valid() {
        // The ninth digit weighs 2: 6 * 2 = 12 leaves remainder 1, so the check would be 10.
        for last in 0..=9 {
            let candidate = format!("000000006{last}");
            assert_eq!(
                NhsNumber::parse(&candidate),
                Err(NhsNumberError::CheckDigit)
            );
        }
    }

    #[test]
    fn check_digit_eleven_maps_to_zero() {
        // An all-zero body sums to 0, 11 - 0 = 11, which the standard writes as 0.
        assert!(NhsNumber::parse("0000000000").is_ok());
        assert_eq!(
            NhsNumber::parse("0000000001"),
            Err(NhsNumberError::CheckDigit)
        );
    }

    #[test]
    fn wrong_lengths_and_letters_are_refused() {
        assert_eq!(NhsNumber::parse("943476591"), Err(NhsNumberError::Length));
        assert_eq!(NhsNumber::parse("94347659190"), Err(NhsNumberError::Length));
        assert_eq!(NhsNumber::parse("94347A5919"), Err(NhsNumberError::Length));
    }

    #[test]
    fn debug_output_hides_the_number() {
        let n = NhsNumber::parse("9434765919").expect("valid");
        assert!(!format!("{n:?} {n}").contains("943"));
    }
}
