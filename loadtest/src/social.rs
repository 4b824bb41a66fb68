//! `social`: U users, each following F others (a generated graph, or the
//! one already in the database with `--from-db`), one websocket per user;
//! random authors post at rate R for a while. Every subscriber must get
//! exactly the posts of the users it follows, once.

use std::collections::HashSet;
use std::time::Duration;

use crate::cost::Servers;
use crate::fanout::{self, Plan, Stage};
use crate::opts::{self, Common, FleetOptions, Target};
use crate::pace::{self, parse_rate};
use crate::population::{Follow, Population};
use crate::report::{self, ProgressLine, Verdict};
use crate::rng::Rng;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    fleet: FleetOptions,
    /// Users, each with one websocket.
    #[arg(short = 'u', long, default_value_t = 1_000,
          value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    users: u32,
    /// Users each user follows (generated graph).
    #[arg(short = 'f', long, default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    follows: u32,
    /// Posts per second over all authors.
    #[arg(short = 'r', long, default_value_t = 50.0, value_parser = parse_rate)]
    rate: f64,
    /// Seconds of posting.
    #[arg(short = 'd', long, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: u64,
    /// Use the first --users users of the database and their follow edges
    /// instead of seeding new ones (only the run's posts are deleted after).
    #[arg(long)]
    from_db: bool,
}

pub async fn run(args: Args) -> anyhow::Result<Verdict> {
    let run = opts::new_run_id();
    let targets = Target::resolve_all(&args.common.urls).await?;
    let mut line = ProgressLine::new();
    let mut rng = Rng::new(args.common.seed);
    let (population, edges) = if args.from_db {
        let (population, edges) =
            Population::existing(&args.common, &run, args.users as usize).await?;
        anyhow::ensure!(
            population.users.len() >= 2,
            "the database has fewer than 2 users"
        );
        line.note(&format!(
            "run {run}: {} users and {} follow edges from the database",
            population.users.len(),
            edges.len()
        ));
        (population, edges)
    } else {
        let edges = follow_graph(args.users, args.follows, &mut rng);
        line.note(&format!(
            "run {run}: seeding {} users and {} follow edges",
            args.users,
            edges.len()
        ));
        let population = Population::seed(&args.common, &run, args.users as usize, &edges).await?;
        (population, edges)
    };
    let users = population.users.len() as u32;
    let mut follows: Vec<Vec<u32>> = vec![Vec::new(); users as usize];
    for (follower, author) in edges {
        follows[follower as usize].push(author);
    }
    let posts = pace::count(Duration::from_secs(args.duration), args.rate);
    let plan = Plan {
        subscribers: follows
            .into_iter()
            .enumerate()
            .map(|(user, f)| (user as u32, f))
            .collect(),
        schedule: (0..posts)
            .map(|_| rng.below(u64::from(users)) as u32)
            .collect(),
        rate: args.rate,
    };
    let outcome = opts::interruptible(async {
        let stage = Stage {
            targets: &targets,
            servers: Servers::new(&args.common.server_pids, &args.common.stores, &targets)?,
            poster: fanout::rest_poster(&args.common, &targets, &population, &plan, 0)?,
        };
        fanout::run(
            &args.common,
            &args.fleet,
            &stage,
            &population,
            &plan,
            &mut line,
        )
        .await
    })
    .await;
    drop(line);
    population.cleanup().await;
    report::conclude(&outcome?.named("social"), args.common.json)
}

/// Each of `users` follows `per_user` distinct others (all others when
/// there are fewer): edges `(follower, author)`.
pub fn follow_graph(users: u32, per_user: u32, rng: &mut Rng) -> Vec<Follow> {
    let per_user = per_user.min(users - 1);
    let mut edges = Vec::with_capacity((users * per_user) as usize);
    let mut chosen = HashSet::with_capacity(per_user as usize);
    for follower in 0..users {
        chosen.clear();
        if per_user == users - 1 {
            chosen.extend((0..users).filter(|u| *u != follower));
        } else {
            while chosen.len() < per_user as usize {
                let author = rng.below(u64::from(users)) as u32;
                if author != follower {
                    chosen.insert(author);
                }
            }
        }
        edges.extend(chosen.iter().map(|author| (follower, *author)));
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_has_distinct_edges_and_no_self_follows() {
        let mut rng = Rng::new(7);
        let edges = follow_graph(100, 20, &mut rng);
        assert_eq!(edges.len(), 2000);
        assert!(edges.iter().all(|(follower, author)| follower != author));
        let distinct: HashSet<_> = edges.iter().collect();
        assert_eq!(distinct.len(), edges.len());
        assert!(edges.iter().all(|(f, a)| *f < 100 && *a < 100));
    }

    #[test]
    fn small_graphs_are_complete() {
        let edges = follow_graph(3, 20, &mut Rng::new(1));
        assert_eq!(edges.len(), 6);
    }
}
