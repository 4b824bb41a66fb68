//! Users: Russian names in both grammatical genders, birthdates, cities,
//! short biographies.

use chrono::{DateTime, Days, NaiveDate, Utc};
use uuid::Uuid;

use super::ids::{TimeSlots, seeded_v7, unix_ms};
use super::random::{SeedRng, Stream};

/// One city per line (`db/cities.csv`).
const CITIES_CSV: &str = include_str!("../../db/cities.csv");

const MALE_FIRST_NAMES: &[&str] = &[
    "Александр",
    "Алексей",
    "Анатолий",
    "Андрей",
    "Антон",
    "Аркадий",
    "Арсений",
    "Артём",
    "Артур",
    "Афанасий",
    "Богдан",
    "Борис",
    "Вадим",
    "Валентин",
    "Валерий",
    "Василий",
    "Вениамин",
    "Виктор",
    "Виталий",
    "Владимир",
    "Владислав",
    "Всеволод",
    "Вячеслав",
    "Гавриил",
    "Геннадий",
    "Георгий",
    "Герман",
    "Глеб",
    "Григорий",
    "Давид",
    "Даниил",
    "Демьян",
    "Денис",
    "Дмитрий",
    "Евгений",
    "Егор",
    "Елисей",
    "Емельян",
    "Ефим",
    "Захар",
    "Зиновий",
    "Иван",
    "Игнат",
    "Игорь",
    "Илья",
    "Иннокентий",
    "Иосиф",
    "Кирилл",
    "Климент",
    "Константин",
    "Лев",
    "Леонид",
    "Лука",
    "Макар",
    "Максим",
    "Марат",
    "Марк",
    "Матвей",
    "Мирон",
    "Михаил",
    "Мстислав",
    "Назар",
    "Нестор",
    "Никита",
    "Николай",
    "Олег",
    "Остап",
    "Павел",
    "Пётр",
    "Платон",
    "Порфирий",
    "Прохор",
    "Роберт",
    "Родион",
    "Роман",
    "Ростислав",
    "Руслан",
    "Рустам",
    "Савва",
    "Савелий",
    "Святослав",
    "Семён",
    "Серафим",
    "Сергей",
    "Станислав",
    "Степан",
    "Тарас",
    "Тимофей",
    "Тимур",
    "Тихон",
    "Трофим",
    "Фёдор",
    "Феликс",
    "Филипп",
    "Эдуард",
    "Эльдар",
    "Эмиль",
    "Эрик",
    "Юлиан",
    "Юрий",
    "Яков",
    "Ян",
    "Ярослав",
];

const FEMALE_FIRST_NAMES: &[&str] = &[
    "Агата",
    "Аглая",
    "Алевтина",
    "Александра",
    "Алёна",
    "Алина",
    "Алиса",
    "Алла",
    "Анастасия",
    "Ангелина",
    "Анжелика",
    "Анна",
    "Антонина",
    "Арина",
    "Белла",
    "Валентина",
    "Валерия",
    "Варвара",
    "Василиса",
    "Вера",
    "Вероника",
    "Виктория",
    "Виолетта",
    "Владислава",
    "Галина",
    "Дарья",
    "Диана",
    "Дина",
    "Доминика",
    "Ева",
    "Евгения",
    "Евдокия",
    "Екатерина",
    "Елена",
    "Елизавета",
    "Есения",
    "Ефросинья",
    "Жанна",
    "Зарина",
    "Зинаида",
    "Злата",
    "Зоя",
    "Изабелла",
    "Инна",
    "Ирина",
    "Камилла",
    "Карина",
    "Кира",
    "Клавдия",
    "Кристина",
    "Ксения",
    "Лада",
    "Лариса",
    "Леся",
    "Лиана",
    "Лидия",
    "Лилия",
    "Любовь",
    "Людмила",
    "Майя",
    "Маргарита",
    "Марина",
    "Мария",
    "Марьяна",
    "Мила",
    "Милана",
    "Мирослава",
    "Надежда",
    "Наталья",
    "Нелли",
    "Ника",
    "Нина",
    "Нонна",
    "Оксана",
    "Олеся",
    "Ольга",
    "Полина",
    "Прасковья",
    "Раиса",
    "Регина",
    "Римма",
    "Роза",
    "Светлана",
    "Серафима",
    "Снежана",
    "Софья",
    "Станислава",
    "Стефания",
    "Таисия",
    "Тамара",
    "Татьяна",
    "Ульяна",
    "Фаина",
    "Эвелина",
    "Элеонора",
    "Эльвира",
    "Эльмира",
    "Эмилия",
    "Юлиана",
    "Юлия",
    "Яна",
    "Ярослава",
];

/// Surnames in the masculine form; [`feminine`] derives the other.
const SURNAMES: &[&str] = &[
    "Абрамов",
    "Авдеев",
    "Агафонов",
    "Аксёнов",
    "Александров",
    "Алексеев",
    "Андреев",
    "Анисимов",
    "Антонов",
    "Артемьев",
    "Архипов",
    "Афанасьев",
    "Баранов",
    "Белинский",
    "Белов",
    "Белых",
    "Беляев",
    "Бирюков",
    "Блинов",
    "Богданов",
    "Бойко",
    "Бондаренко",
    "Борисов",
    "Боровский",
    "Большаков",
    "Быков",
    "Васильев",
    "Веселов",
    "Виноградов",
    "Вишневский",
    "Власов",
    "Волков",
    "Воробьёв",
    "Воронин",
    "Воронцов",
    "Вознесенский",
    "Высоцкий",
    "Гаврилов",
    "Герасимов",
    "Голубев",
    "Гончаров",
    "Горбунов",
    "Городецкий",
    "Горшков",
    "Грачёв",
    "Григорьев",
    "Гришин",
    "Громов",
    "Гусев",
    "Давыдов",
    "Данилов",
    "Денисов",
    "Дмитриев",
    "Долгих",
    "Донской",
    "Достоевский",
    "Дьячков",
    "Евдокимов",
    "Егоров",
    "Ежов",
    "Елисеев",
    "Емельянов",
    "Еремеев",
    "Ерёмин",
    "Ермаков",
    "Ершов",
    "Ефимов",
    "Ефремов",
    "Жданов",
    "Жуков",
    "Жуковский",
    "Журавлёв",
    "Забелин",
    "Загорский",
    "Зайцев",
    "Зарецкий",
    "Захаров",
    "Зимин",
    "Зиновьев",
    "Зуев",
    "Зыков",
    "Иванов",
    "Игнатьев",
    "Ильин",
    "Исаев",
    "Казаков",
    "Калинин",
    "Капустин",
    "Карпов",
    "Каширин",
    "Киселёв",
    "Кириллов",
    "Климов",
    "Ковалёв",
    "Коваленко",
    "Ковальчук",
    "Козлов",
    "Колесников",
    "Комаров",
    "Кондратьев",
    "Коновалов",
    "Копылов",
    "Королёв",
    "Корнилов",
    "Костин",
    "Котов",
    "Кравченко",
    "Красильников",
    "Крылов",
    "Крюков",
    "Кудрявцев",
    "Кудряшов",
    "Кузнецов",
    "Кузьмин",
    "Куликов",
    "Лаврентьев",
    "Лазарев",
    "Лапин",
    "Лаптев",
    "Лебедев",
    "Леонов",
    "Лисовский",
    "Логинов",
    "Лукин",
    "Лыткин",
    "Макаров",
    "Максимов",
    "Малышев",
    "Мамонтов",
    "Марков",
    "Мартынов",
    "Маслов",
    "Матвеев",
    "Медведев",
    "Мельников",
    "Миронов",
    "Михайлов",
    "Мишин",
    "Моисеев",
    "Морозов",
    "Муравьёв",
    "Мухин",
    "Назаров",
    "Наумов",
    "Некрасов",
    "Никитин",
    "Никифоров",
    "Николаев",
    "Новиков",
    "Носов",
    "Овчинников",
    "Одинцов",
    "Орлов",
    "Осипов",
    "Островский",
    "Павлов",
    "Панов",
    "Панфилов",
    "Пестов",
    "Петров",
    "Петухов",
    "Пименов",
    "Платонов",
    "Покровский",
    "Поляков",
    "Полянский",
    "Пономарёв",
    "Попов",
    "Потапов",
    "Преображенский",
    "Прохоров",
    "Пушкин",
    "Раевский",
    "Родионов",
    "Рогов",
    "Рождественский",
    "Романов",
    "Рубцов",
    "Румянцев",
    "Русаков",
    "Рыбаков",
    "Рябинин",
    "Савельев",
    "Сафонов",
    "Селезнёв",
    "Семёнов",
    "Сергеев",
    "Седых",
    "Сидоров",
    "Симонов",
    "Смирнов",
    "Соболев",
    "Соколов",
    "Соловьёв",
    "Сорокин",
    "Степанов",
    "Субботин",
    "Суворов",
    "Тарасов",
    "Терентьев",
    "Тимофеев",
    "Титов",
    "Тихомиров",
    "Тихонов",
    "Ткаченко",
    "Толстой",
    "Третьяков",
    "Троицкий",
    "Трофимов",
    "Трубецкой",
    "Туманов",
    "Уваров",
    "Успенский",
    "Устинов",
    "Фадеев",
    "Федотов",
    "Фёдоров",
    "Филатов",
    "Филиппов",
    "Фокин",
    "Фомин",
    "Фролов",
    "Харитонов",
    "Хохлов",
    "Цветков",
    "Чайковский",
    "Чернов",
    "Черных",
    "Чернышёв",
    "Чистяков",
    "Шаров",
    "Шевченко",
    "Шевчук",
    "Шестаков",
    "Широков",
    "Шишкин",
    "Шубин",
    "Щербаков",
    "Юдин",
    "Яковлев",
    "Яворский",
    "Якушев",
];

const HOBBIES: &[&str] = &[
    "путешествия",
    "книги",
    "кино",
    "футбол",
    "хоккей",
    "шахматы",
    "рыбалку",
    "походы",
    "фотографию",
    "музыку",
    "джаз",
    "театр",
    "кулинарию",
    "велосипед",
    "бег",
    "плавание",
    "йогу",
    "программирование",
    "настольные игры",
    "горы",
    "лыжи",
    "сноуборд",
    "сад и огород",
    "историю",
    "астрономию",
    "живопись",
    "танцы",
    "сериалы",
    "кошек",
    "собак",
];

const JOBS: &[&str] = &[
    "Работаю инженером.",
    "Работаю врачом.",
    "Работаю учителем.",
    "Работаю программистом.",
    "Работаю дизайнером.",
    "Работаю бухгалтером.",
    "Работаю водителем.",
    "Работаю менеджером.",
    "Работаю юристом.",
    "Работаю архитектором.",
    "Работаю журналистом.",
    "Работаю поваром.",
    "Учусь в университете.",
    "На пенсии.",
    "Свой небольшой бизнес.",
];

const BIO_ENDINGS: &[&str] = &[
    "",
    "",
    "Ищу друзей по интересам.",
    "Пишу о том, что вижу.",
    "Открыт к новым знакомствам.",
    "Мечтаю увидеть Байкал.",
    "Всегда рад интересному разговору.",
];

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
