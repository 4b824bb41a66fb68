//! Posts: short texts from a small vocabulary, dated over the last year.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::graph::Authors;
use super::ids::{TimeSlots, seeded_v7};
use super::people::timestamp;
use super::random::{SeedRng, Stream};

const OPENERS: &[&str] = &[
    "Сегодня",
    "Вчера",
    "Наконец",
    "Кажется,",
    "Утром",
    "Вечером",
    "Внезапно",
    "Друзья,",
    "Честно говоря,",
    "Как всегда,",
];

const SUBJECTS: &[&str] = &[
    "я",
    "мы",
    "сосед",
    "кот",
    "начальник",
    "погода",
    "город",
    "поезд",
    "команда",
    "бабушка",
    "весь двор",
    "наш чат",
];

const VERBS: &[&str] = &[
    "видел",
    "нашёл",
    "прочитал",
    "приготовил",
    "посмотрел",
    "купил",
    "починил",
    "обсуждал",
    "вспомнил",
    "сфотографировал",
    "услышал",
    "попробовал",
];

const ADJECTIVES: &[&str] = &[
    "новый",
    "старый",
    "странный",
    "красивый",
    "огромный",
    "маленький",
    "смешной",
    "настоящий",
    "редкий",
    "удивительный",
];

const OBJECTS: &[&str] = &[
    "фильм",
    "рецепт",
    "велосипед",
    "закат",
    "концерт",
    "роман",
    "пирог",
    "парк",
    "трамвай",
    "сериал",
    "рынок",
    "мост",
    "дождь",
    "матч",
    "подкаст",
];

const CLOSERS: &[&str] = &[
    "Всем рекомендую.",
    "Кто со мной?",
    "Что думаете?",
    "Подробности позже.",
    "Было здорово!",
    "Ни о чём не жалею.",
    "Повторим на выходных.",
    "",
];

/// One `posts` row.
#[derive(Debug, Clone, PartialEq)]
pub struct PostRow {
    pub id: Uuid,
    /// Index of the author in the user list.
    pub author: u32,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// Streams the posts in id order: post `j` is dated in the `j`-th of equal
/// slots of the window, so ids ascend with `j`.
pub struct Posts<'a> {
    authors: Authors<'a>,
    slots: TimeSlots,
    rng: SeedRng,
}

impl<'a> Posts<'a> {
    pub fn new(seed: u64, count: u64, from_ms: u64, until_ms: u64, authors: Authors<'a>) -> Self {
        Self {
            authors,
            slots: TimeSlots::new(from_ms, until_ms, count),
            rng: SeedRng::new(seed, Stream::Posts),
        }
    }

    pub fn row(&mut self, index: u64) -> PostRow {
        let unix_ms = self.slots.timestamp(index, &mut self.rng);
        let id = seeded_v7(unix_ms, &mut self.rng);
        let author = self.authors.sample(&mut self.rng);
        PostRow {
            id,
            author,
            text: text(&mut self.rng),
            created_at: timestamp(unix_ms),
        }
    }
}

/// One to three sentences, 30 to 250 characters.
pub fn text(rng: &mut SeedRng) -> String {
    let sentences = 1 + rng.below(3);
    let mut text = String::with_capacity(200);
    for i in 0..sentences {
        if i > 0 {
            text.push(' ');
        }
        let opener = rng.pick(OPENERS);
        let subject = rng.pick(SUBJECTS);
        let verb = rng.pick(VERBS);
        let adjective = rng.pick(ADJECTIVES);
        let object = rng.pick(OBJECTS);
        text.push_str(&format!("{opener} {subject} {verb} {adjective} {object}."));
    }
    let closer = rng.pick(CLOSERS);
    if !closer.is_empty() {
        text.push(' ');
        text.push_str(closer);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::graph::Popularity;

    #[test]
    fn posts_ascend_by_id_and_stay_in_the_window() {
        let popularity = Popularity::new(42, 100);
        let (from, until) = (1_700_000_000_000, 1_731_536_000_000);
        let mut posts = Posts::new(42, 1_000, from, until, Authors::new(&popularity));
        let rows: Vec<PostRow> = (0..1_000).map(|j| posts.row(j)).collect();
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
        for row in &rows {
            assert_eq!(row.id.get_version_num(), 7);
            let ms = row.created_at.timestamp_millis() as u64;
            assert!((from..until).contains(&ms));
            assert!(row.author < 100);
            let chars = row.text.chars().count();
            assert!((20..=500).contains(&chars), "{chars}: {}", row.text);
        }
        let mut again = Posts::new(42, 1_000, from, until, Authors::new(&popularity));
        assert_eq!(
            rows[..50],
            (0..50).map(|j| again.row(j)).collect::<Vec<_>>()
        );
    }
}
