//! Users: Russian names in both grammatical genders, birthdates, cities,
//! short biographies.

use chrono::{DateTime, Days, NaiveDate, Utc};
use uuid::Uuid;

use super::ids::{TimeSlots, seeded_v7, unix_ms};
use super::names::{BIO_ENDINGS, FEMALE_FIRST_NAMES, HOBBIES, JOBS, MALE_FIRST_NAMES, SURNAMES};
use super::random::{SeedRng, Stream};

/// One city per line (`db/cities.csv`).
const CITIES_CSV: &str = include_str!("../../db/cities.csv");

/// The feminine form of a Russian surname: Иванов → Иванова, Достоевский →
/// Достоевская, Толстой → Толстая; Черных, Шевченко, Шевчук stay as they are.
pub fn feminine(surname: &str) -> String {
    for suffix in ["ов", "ев", "ёв", "ин", "ын"] {
        if surname.ends_with(suffix) {
            return format!("{surname}а");
        }
    }
    for suffix in ["ий", "ой", "ый"] {
        if let Some(stem) = surname.strip_suffix(suffix) {
            return format!("{stem}ая");
        }
    }
    surname.to_owned()
}

/// The vocabulary of user rows, parsed and inflected once.
pub struct Lexicon {
    cities: Vec<&'static str>,
    /// (masculine, feminine) forms.
    surnames: Vec<(&'static str, String)>,
}

impl Lexicon {
    pub fn new() -> Self {
        let cities: Vec<&'static str> = CITIES_CSV
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        assert!(!cities.is_empty(), "db/cities.csv lists no city");
        Self {
            cities,
            surnames: SURNAMES.iter().map(|&s| (s, feminine(s))).collect(),
        }
    }

    #[cfg(test)]
    pub fn cities(&self) -> &[&'static str] {
        &self.cities
    }
}

impl Default for Lexicon {
    fn default() -> Self {
        Self::new()
    }
}

/// One `users` row; `password_hash` is the same for every row.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow<'a> {
    pub id: Uuid,
    pub first_name: &'static str,
    pub second_name: &'a str,
    pub birthdate: NaiveDate,
    pub biography: String,
    pub city: &'static str,
    pub created_at: DateTime<Utc>,
}

/// The user ids, ascending: user `i` registered at a random instant of the
/// `i`-th of `n` equal slots of `[from_ms, until_ms)`. Kept in memory (16
/// bytes a user) because follows and posts refer to users by index.
pub fn user_ids(seed: u64, n: u32, from_ms: u64, until_ms: u64) -> Vec<Uuid> {
    let slots = TimeSlots::new(from_ms, until_ms, u64::from(n));
    let mut rng = SeedRng::new(seed, Stream::UserIds);
    let mut ids: Vec<Uuid> = (0..u64::from(n))
        .map(|i| seeded_v7(slots.timestamp(i, &mut rng), &mut rng))
        .collect();
    // Equal timestamps happen only with more users than milliseconds in
    // the window; keep "index order is id order" true even then.
    if !ids.is_sorted() {
        ids.sort_unstable();
    }
    ids
}

/// Streams the profile of each user, in index order.
pub struct Users<'a> {
    lexicon: &'a Lexicon,
    rng: SeedRng,
    earliest_birthdate: NaiveDate,
    birthdate_days: u64,
}

impl<'a> Users<'a> {
    pub fn new(seed: u64, lexicon: &'a Lexicon) -> Self {
        let earliest = NaiveDate::from_ymd_opt(1950, 1, 1).expect("valid date");
        let latest = NaiveDate::from_ymd_opt(2008, 12, 31).expect("valid date");
        Self {
            lexicon,
            rng: SeedRng::new(seed, Stream::Users),
            earliest_birthdate: earliest,
            birthdate_days: (latest - earliest).num_days() as u64 + 1,
        }
    }

    pub fn row(&mut self, id: Uuid) -> UserRow<'a> {
        let rng = &mut self.rng;
        let female = rng.chance(1, 2);
        let (first_name, second_name) = {
            let (masculine, feminine) = rng.pick(&self.lexicon.surnames);
            if female {
                (*rng.pick(FEMALE_FIRST_NAMES), feminine.as_str())
            } else {
                (*rng.pick(MALE_FIRST_NAMES), *masculine)
            }
        };
        let birthdate = self.earliest_birthdate + Days::new(self.rng.below(self.birthdate_days));
        let city = *self.rng.pick(&self.lexicon.cities);
        let biography = biography(&mut self.rng);
        UserRow {
            id,
            first_name,
            second_name,
            birthdate,
            biography,
            city,
            created_at: timestamp(unix_ms(&id)),
        }
    }
}

fn biography(rng: &mut SeedRng) -> String {
    if rng.chance(1, 10) {
        return String::new();
    }
    let first = rng.pick(HOBBIES);
    let mut second = rng.pick(HOBBIES);
    while second == first {
        second = rng.pick(HOBBIES);
    }
    let mut text = format!("Люблю {first} и {second}. {}", rng.pick(JOBS));
    let ending = rng.pick(BIO_ENDINGS);
    if !ending.is_empty() {
        text.push(' ');
        text.push_str(ending);
    }
    text
}

pub fn timestamp(unix_ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(unix_ms as i64).expect("a UUIDv7 timestamp fits chrono")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn surnames_take_the_feminine_form() {
        assert_eq!(feminine("Иванов"), "Иванова");
        assert_eq!(feminine("Осипов"), "Осипова");
        assert_eq!(feminine("Соловьёв"), "Соловьёва");
        assert_eq!(feminine("Ильин"), "Ильина");
        assert_eq!(feminine("Достоевский"), "Достоевская");
        assert_eq!(feminine("Троицкий"), "Троицкая");
        assert_eq!(feminine("Толстой"), "Толстая");
        assert_eq!(feminine("Черных"), "Черных");
        assert_eq!(feminine("Шевченко"), "Шевченко");
        assert_eq!(feminine("Шевчук"), "Шевчук");
    }

    #[test]
    fn name_lists_are_real_sized_and_without_duplicates() {
        for (list, least) in [
            (MALE_FIRST_NAMES, 100),
            (FEMALE_FIRST_NAMES, 100),
            (SURNAMES, 200),
        ] {
            assert!(list.len() >= least, "{} names", list.len());
            let unique: HashSet<_> = list.iter().collect();
            assert_eq!(unique.len(), list.len(), "duplicates in {list:?}");
        }
        assert!(MALE_FIRST_NAMES.contains(&"Константин") && SURNAMES.contains(&"Осипов"));
        let lexicon = Lexicon::new();
        assert!(lexicon.cities().len() > 300);
        assert!(lexicon.cities().contains(&"Москва"));
        assert!(
            lexicon
                .cities()
                .iter()
                .all(|c| c.trim() == *c && !c.is_empty())
        );
    }

    #[test]
    fn same_seed_same_people_other_seed_other_people() {
        let lexicon = Lexicon::new();
        let ids = user_ids(42, 200, 1_600_000_000_000, 1_700_000_000_000);
        let people = |seed| {
            let mut users = Users::new(seed, &lexicon);
            ids.iter()
                .map(|&id| {
                    let row = users.row(id);
                    (
                        row.first_name,
                        row.second_name.to_owned(),
                        row.birthdate,
                        row.biography,
                        row.city,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(people(42), people(42));
        assert_ne!(people(42), people(43));
        assert_eq!(ids, user_ids(42, 200, 1_600_000_000_000, 1_700_000_000_000));
        assert_ne!(ids, user_ids(43, 200, 1_600_000_000_000, 1_700_000_000_000));
    }

    #[test]
    fn rows_are_plausible_people() {
        let lexicon = Lexicon::new();
        let ids = user_ids(1, 2_000, 1_600_000_000_000, 1_700_000_000_000);
        assert!(ids.is_sorted());
        let mut users = Users::new(1, &lexicon);
        let mut women = 0;
        for &id in &ids {
            let row = users.row(id);
            let female = FEMALE_FIRST_NAMES.contains(&row.first_name);
            assert!(female || MALE_FIRST_NAMES.contains(&row.first_name));
            if female {
                women += 1;
                assert!(lexicon.surnames.iter().any(|(_, f)| f == row.second_name));
            } else {
                assert!(SURNAMES.contains(&row.second_name));
            }
            let year = row.birthdate.format("%Y").to_string();
            assert!(("1950".."2009").contains(&year.as_str()), "{year}");
            assert!(row.biography.chars().count() <= 4000);
            assert_eq!(row.created_at.timestamp_millis() as u64, unix_ms(&row.id));
        }
        assert!((800..1200).contains(&women), "{women} women of 2000");
    }
}
