use std::fmt;

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::text::{Text, TextRule};
use super::{UserId, ValidationError};

pub struct FirstNameRule;
impl TextRule for FirstNameRule {
    const FIELD: &'static str = "first_name";
    const MIN: usize = 1;
    const MAX: usize = 100;
}

pub struct SecondNameRule;
impl TextRule for SecondNameRule {
    const FIELD: &'static str = "second_name";
    const MIN: usize = 1;
    const MAX: usize = 100;
}

pub struct CityRule;
impl TextRule for CityRule {
    const FIELD: &'static str = "city";
    const MIN: usize = 0;
    const MAX: usize = 100;
}

pub struct BiographyRule;
impl TextRule for BiographyRule {
    const FIELD: &'static str = "biography";
    const MIN: usize = 0;
    const MAX: usize = 4000;
}

pub struct PasswordRule;
impl TextRule for PasswordRule {
    const FIELD: &'static str = "password";
    const MIN: usize = 8;
    const MAX: usize = 1024;
}

pub struct FirstNamePrefixRule;
impl TextRule for FirstNamePrefixRule {
    const FIELD: &'static str = "first_name";
    const MIN: usize = 0;
    const MAX: usize = 100;
}

pub struct LastNamePrefixRule;
impl TextRule for LastNamePrefixRule {
    const FIELD: &'static str = "last_name";
    const MIN: usize = 0;
    const MAX: usize = 100;
}

pub type PersonName<R> = Text<R>;
pub type City = Text<CityRule>;
pub type Biography = Text<BiographyRule>;
pub type NamePrefix<R> = Text<R>;

/// A calendar date in `YYYY-MM-DD`, not before 1900 and not in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BirthDate(NaiveDate);

impl BirthDate {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let date = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| {
            ValidationError(format!("birthdate must be a date YYYY-MM-DD, got {raw:?}"))
        })?;
        let earliest = NaiveDate::from_ymd_opt(1900, 1, 1).expect("valid constant date");
        if date < earliest || date > Utc::now().date_naive() {
            return Err(ValidationError(format!(
                "birthdate must be between 1900-01-01 and today, got {raw}"
            )));
        }
        Ok(Self(date))
    }

    pub fn date(&self) -> NaiveDate {
        self.0
    }
}

impl<'de> Deserialize<'de> for BirthDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A password as typed; never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Password(Text<PasswordRule>);

impl Password {
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The body of `/user/register`.
#[derive(Debug, Deserialize)]
pub struct NewUser {
    pub first_name: PersonName<FirstNameRule>,
    pub second_name: PersonName<SecondNameRule>,
    pub birthdate: BirthDate,
    #[serde(default = "empty_text")]
    pub biography: Biography,
    #[serde(default = "empty_text")]
    pub city: City,
    pub password: Password,
}

fn empty_text<R: TextRule>() -> Text<R> {
    Text::parse(String::new()).expect("rules of optional fields accept empty text")
}

/// The body of `/login`.
#[derive(Debug, Deserialize)]
pub struct Credentials {
    pub id: UserId,
    pub password: Password,
}

/// The query of `/user/search`: prefixes of both names, matched case as stored.
#[derive(Debug, Deserialize)]
pub struct UserSearch {
    pub first_name: NamePrefix<FirstNamePrefixRule>,
    pub last_name: NamePrefix<LastNamePrefixRule>,
}

/// A user's public profile, as `/user/get` and `/user/search` answer it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    pub id: UserId,
    pub first_name: String,
    pub second_name: String,
    pub birthdate: NaiveDate,
    pub biography: String,
    pub city: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birthdate_accepts_iso_dates_only() {
        assert_eq!(
            BirthDate::parse("2017-02-01").unwrap().date(),
            NaiveDate::from_ymd_opt(2017, 2, 1).unwrap()
        );
        // The bounds themselves are valid birthdates.
        assert!(BirthDate::parse("1900-01-01").is_ok());
        let today = Utc::now().date_naive().format("%Y-%m-%d").to_string();
        assert!(BirthDate::parse(&today).is_ok());
        for bad in [
            "01.02.2017",
            "2017-02-30",
            "2017-2-1x",
            "",
            "1899-12-31",
            "3000-01-01",
        ] {
            assert!(BirthDate::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn new_user_defaults_optional_fields_and_requires_the_rest() {
        let user: NewUser = serde_json::from_str(
            r#"{"first_name":"Имя","second_name":"Фамилия","birthdate":"2000-01-01","password":"12345678"}"#,
        )
        .unwrap();
        assert_eq!(user.city.as_str(), "");
        assert_eq!(user.biography.as_str(), "");

        let err = serde_json::from_str::<NewUser>(r#"{"first_name":"Имя"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
    }

    #[test]
    fn password_is_not_printed() {
        let creds: Credentials = serde_json::from_str(
            r#"{"id":"e4d2e6b0-cde2-42c5-aac3-0b8316f21e58","password":"hunter2hunter2"}"#,
        )
        .unwrap();
        assert!(!format!("{creds:?}").contains("hunter2"));
    }
}
