//! `moonlens-host`'s command line (clap derive). One definition gives the parser, every
//! subcommand's `--help` (one line per option with its default), typo suggestions, and the
//! shell completions and man page `moonlens-host completions` writes. The defaults of the
//! training options are read from [`train::Config::default`], so help and behaviour agree.

use crate::host::train::{self, ImageInput};
use std::path::PathBuf;

/// The workstation companion of moonlensd: trains and exports model bundles, evaluates them,
/// draws contact sheets, benchmarks and fuzzes. Prints one JSON line on stdout per command;
/// progress and logs go to stderr (RUST_LOG).
#[derive(Debug, clap::Parser)]
#[command(name = "moonlens-host", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Recall@1/5/10 of a bundle on a pairs file, both directions
    Eval {
        /// The model bundle
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        /// Image-caption pairs, JSON lines ({"image": …, "text": …})
        #[arg(long, value_name = "FILE.jsonl")]
        pairs: PathBuf,
        /// Also score each image by its best region: global + λ × best region cosine, one
        /// report per λ (models/README.md, "Region scoring")
        #[arg(long, value_name = "λ,…", value_delimiter = ',')]
        regions: Vec<f32>,
        /// With --regions: how many of the feature map's cells an image keeps, the most
        /// confident first (49 = all of EfficientNet-Lite0's 7×7)
        #[arg(long, value_name = "K", default_value_t = 49, requires = "regions",
              value_parser = at_least_one)]
        region_cells: usize,
    },
    /// Train projection heads on image-caption pairs (or, with --from-index, a new image head
    /// for the bundle that wrote an index, from the operator's tags)
    Train(Train),
    /// Distil the text head of a multilingual student from a teacher's, on parallel text
    Distill {
        /// The bundle whose text embeddings are the target
        #[arg(long, value_name = "BUNDLE")]
        teacher: PathBuf,
        /// The bundle whose text encoder learns to hit them
        #[arg(long, value_name = "BUNDLE")]
        student: PathBuf,
        /// Also read each text's bag of CJK characters and character pairs, hashed into this
        /// many slots (0: the sentence embedding alone; models/README.md, "A character bag")
        #[arg(long, value_name = "N", default_value_t = 0)]
        char_buckets: usize,
        /// Also read every other word's character trigrams, hashed into this many slots of
        /// their own after the CJK ones (0: none)
        #[arg(long, value_name = "N", default_value_t = 0)]
        char_trigram_buckets: usize,
        /// Weight of a ranking term beside the cosine distance: each text should be nearer
        /// its own target than the batch's other targets (soft targets; 0: the cosine alone)
        #[arg(long, value_name = "W", default_value_t = 0.0)]
        ranking: f64,
        /// Softmax temperature of the ranking term
        #[arg(long, value_name = "T", default_value_t = 0.05, requires = "ranking")]
        ranking_temperature: f64,
        #[command(flatten)]
        training: Training,
    },
    /// Train the router that sends unaccented queries that are not English to a bundle's
    /// multilingual tower, and add it to the bundle (route.bin)
    Route {
        /// The bundle to add it to (changed in place)
        #[arg(long, value_name = "BUNDLE")]
        bundle: PathBuf,
        /// English texts: pairs files (their captions)
        #[arg(
            long,
            value_name = "FILE.jsonl,…",
            value_delimiter = ',',
            required = true
        )]
        english: Vec<PathBuf>,
        /// Parallel files: English sources and their translations
        #[arg(
            long,
            value_name = "FILE.jsonl,…",
            value_delimiter = ',',
            required = true
        )]
        parallel: Vec<PathBuf>,
        /// Validation English pairs files (the threshold is chosen on them)
        #[arg(
            long,
            value_name = "FILE.jsonl,…",
            value_delimiter = ',',
            required = true
        )]
        val_english: Vec<PathBuf>,
        /// Validation parallel files (reported per language)
        #[arg(
            long,
            value_name = "FILE.jsonl,…",
            value_delimiter = ',',
            required = true
        )]
        val_parallel: Vec<PathBuf>,
        /// At most this share of the English validation texts may leave the English tower
        #[arg(long, value_name = "F", default_value_t = 0.01)]
        max_misroute: f64,
        /// Hashed feature slots
        #[arg(long, value_name = "N", default_value_t = 1 << 17)]
        buckets: usize,
        /// Passes over the training texts
        #[arg(long, default_value_t = 8)]
        epochs: usize,
    },
    /// Export trained heads as a model bundle the daemon loads
    Export {
        /// The heads `train` or `distill` wrote
        #[arg(long, value_name = "DIR")]
        heads: PathBuf,
        /// Where to write the bundle
        #[arg(long, value_name = "BUNDLE")]
        out: PathBuf,
        /// The base bundle (default: the one the heads were trained on; with --teacher the
        /// student)
        #[arg(long, value_name = "BUNDLE")]
        bundle: Option<PathBuf>,
        /// Quantize the encoders to int8
        #[arg(long)]
        int8: bool,
        /// Blend the new heads with the base bundle's (0 = new heads only)
        #[arg(
            long,
            value_name = "W",
            default_value_t = 0.0,
            conflicts_with = "teacher"
        )]
        mix: f64,
        /// Distilled heads: the teacher bundle whose image side the export keeps
        #[arg(long, value_name = "BUNDLE")]
        teacher: Option<PathBuf>,
    },
    /// A PNG contact sheet of the best matches of a query among a pairs file's images
    Sheet {
        /// The model bundle
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        /// The images to search, as a pairs file
        #[arg(long, value_name = "FILE.jsonl")]
        pairs: PathBuf,
        /// What to look for
        #[arg(long)]
        query: String,
        /// Where to write the sheet
        #[arg(long, value_name = "FILE.png")]
        out: PathBuf,
        /// Matches to show
        #[arg(long, default_value_t = 12)]
        k: usize,
        /// Rank as the daemon does with regions: global + λ × best region, the best region
        /// of each hit outlined (0: the global cosine alone)
        #[arg(long, value_name = "λ", default_value_t = 0.0)]
        regions: f32,
    },
    /// Check a converted bundle's reference.json (onnxruntime's outputs) against tract
    Parity {
        /// The model bundle
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
    },
    /// Measurements, each against a baseline taken in the same run
    #[command(subcommand)]
    Bench(Bench),
    /// Shell completions (bash, zsh, fish) and man pages of moonlensd and moonlens-host
    Completions {
        /// Directory to write them into (created)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Feed random and mutated inputs to the protocol parser or the index reader
    Fuzz {
        /// What to fuzz
        #[arg(value_enum)]
        target: FuzzTarget,
        /// How long to run
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Random seed (a run is repeatable)
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where crashing inputs are saved
        #[arg(long, value_name = "DIR", default_value = "target/fuzz-crashes")]
        crashes: PathBuf,
    },
    /// Fleet search on PostgreSQL + pgvector: ship boards' entries there, search them all
    /// (docs/fleet.md)
    #[cfg(feature = "fleet")]
    #[command(subcommand)]
    Fleet(Fleet),
    /// Test tool of the crash-safety harness (tests/index.rs): appends entries whose embedding
    /// is a function of their sequence number and prints each acknowledged seq
    #[command(hide = true)]
    IndexWriter {
        #[arg(long, value_name = "DIR")]
        index: PathBuf,
        #[arg(long, default_value_t = 64)]
        capacity: u64,
        #[arg(long, default_value_t = u64::MAX)]
        count: u64,
    },
}

/// `train`: the options of both of its forms; the form-specific ones refuse the other form.
#[derive(Debug, clap::Args)]
pub struct Train {
    #[command(flatten)]
    pub training: Training,
    /// The bundle whose frozen encoders the heads sit on
    #[arg(long, value_name = "BUNDLE", default_value = "models/default")]
    pub bundle: PathBuf,
    /// Softmax temperature of the contrastive loss
    #[arg(long, value_name = "T", default_value_t = train::Config::default().temperature)]
    pub temperature: f64,
    /// What the image head reads: the backbone's features (raw) or the bundle's own image
    /// embedding (bridge)
    #[arg(long, value_enum, default_value_t = ImageInputArg::Raw, conflicts_with = "from_index")]
    pub image_input: ImageInputArg,
    /// Projection dimension
    #[arg(long, default_value_t = train::Config::default().dim, conflicts_with = "from_index")]
    pub dim: usize,
    /// Train on a daemon's index and its tags instead of images (writes a bundle to --out)
    #[arg(long, value_name = "INDEX_DIR")]
    pub from_index: Option<PathBuf>,
    /// With --from-index: passes over the tagged frames per epoch
    #[arg(long, default_value_t = 8, requires = "from_index")]
    pub repeat: usize,
}

/// The options `train` and `distill` share.
#[derive(Debug, clap::Args)]
pub struct Training {
    /// Training pairs, JSON lines; several files comma-separated
    #[arg(
        long,
        value_name = "FILE.jsonl,…",
        value_delimiter = ',',
        required = true
    )]
    pub pairs: Vec<PathBuf>,
    /// Validation pairs (early stopping); several files comma-separated
    #[arg(
        long,
        value_name = "FILE.jsonl,…",
        value_delimiter = ',',
        required = true
    )]
    pub val: Vec<PathBuf>,
    /// Where to write the heads, the curve and the report
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// GELU/Dense/Dropout/residual/LayerNorm blocks after the first Dense
    #[arg(long, default_value_t = train::Config::default().blocks)]
    pub blocks: usize,
    /// Dropout probability
    #[arg(long, default_value_t = train::Config::default().dropout)]
    pub dropout: f64,
    /// AdamW learning rate
    #[arg(long, default_value_t = train::Config::default().lr)]
    pub lr: f64,
    /// AdamW weight decay
    #[arg(long, default_value_t = train::Config::default().weight_decay)]
    pub weight_decay: f64,
    /// Pairs per batch
    #[arg(long, default_value_t = train::Config::default().batch, value_parser = at_least_one)]
    pub batch: usize,
    /// At most this many epochs
    #[arg(long, default_value_t = train::Config::default().max_epochs, value_parser = at_least_one)]
    pub epochs: usize,
    /// Early stopping: epochs without a better validation loss
    #[arg(long, default_value_t = train::Config::default().patience)]
    pub patience: usize,
    /// Random seed (a run is repeatable)
    #[arg(long, default_value_t = train::Config::default().seed)]
    pub seed: u64,
    /// Cache of the frozen encoders' outputs (reused across runs)
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

/// A count that must not be 0: no epochs would write an untrained head as if trained.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl Training {
    /// The training configuration these options describe.
    pub fn config(&self) -> train::Config {
        train::Config {
            blocks: self.blocks,
            dropout: self.dropout,
            lr: self.lr,
            weight_decay: self.weight_decay,
            batch: self.batch,
            max_epochs: self.epochs,
            patience: self.patience,
            seed: self.seed,
            ..train::Config::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageInputArg {
    Raw,
    Bridge,
}

impl From<ImageInputArg> for ImageInput {
    fn from(a: ImageInputArg) -> ImageInput {
        match a {
            ImageInputArg::Raw => ImageInput::Raw,
            ImageInputArg::Bridge => ImageInput::Bridge,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FuzzTarget {
    Protocol,
    Index,
}

impl FuzzTarget {
    pub fn name(self) -> &'static str {
        match self {
            FuzzTarget::Protocol => "protocol",
            FuzzTarget::Index => "index",
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Encoder latency (image and text towers) and the daemon's time to a first answer
    Encode {
        /// The model bundle
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        /// Runs per measurement
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// One JSON line instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Time per node of the image tower
    Profile {
        /// The model bundle
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
        /// Runs to average
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Frames stored a second with one encode worker and with one per core
    Ingest {
        /// The model bundle
        #[arg(long, value_name = "DIR", default_value = "models/default")]
        bundle: PathBuf,
        /// Images to replay as frames
        #[arg(long, value_name = "DIR", default_value = "models/samples")]
        images: PathBuf,
        /// Frames per measurement
        #[arg(long, default_value_t = 88)]
        frames: usize,
        /// One JSON line instead of the table
        #[arg(long)]
        json: bool,
    },
    /// A frame's region embeddings (eval --regions): tower time and bytes beside the plain
    /// embedding's, and scoring a candidate's regions beside its global cosine
    Regions {
        /// The model bundle
        #[arg(long, value_name = "DIR", default_value = "models/default")]
        bundle: PathBuf,
        /// Runs per measurement
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// One JSON line instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Re-projecting an index into a retrained bundle, against re-encoding its frames
    Reproject {
        /// The model bundle
        #[arg(long, value_name = "DIR", default_value = "models/default")]
        bundle: PathBuf,
        /// Entries in the index
        #[arg(long, default_value_t = 10_000)]
        entries: usize,
        /// One JSON line instead of the table
        #[arg(long)]
        json: bool,
    },
    /// The fleet database against the board: sync entries/s, search latency (HNSW, exact)
    /// beside the board's exact scan, recall@10 (in a database of its own, dropped after)
    #[cfg(feature = "fleet")]
    Fleet {
        /// postgresql://USER:PASSWORD@HOST:PORT/DB (the user may create databases)
        #[arg(
            long,
            value_name = "URL",
            env = "MOONLENS_FLEET_DB",
            hide_env_values = true
        )]
        db: String,
        /// The model bundle
        #[arg(long, value_name = "DIR", default_value = "models/default")]
        bundle: PathBuf,
        /// Images whose embeddings (and noisy near-duplicates) fill the index
        #[arg(long, value_name = "DIR", default_value = "models/samples")]
        images: PathBuf,
        /// Entries in the board's index and the database
        #[arg(long, default_value_t = 100_000)]
        entries: u64,
        /// Text queries to time
        #[arg(long, default_value_t = 30)]
        queries: usize,
        /// The approximate indexes to build and measure, in turn
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "ivfflat,hnsw"
        )]
        ann: Vec<AnnKind>,
        /// HNSW links per node (pgvector's m)
        #[arg(long, default_value_t = crate::fleet::ann::HNSW_M)]
        m: u32,
        /// HNSW build search width (pgvector's ef_construction)
        #[arg(long, default_value_t = crate::fleet::ann::HNSW_EF_CONSTRUCTION)]
        ef_construction: u32,
        /// Keep the benchmark's database for inspection instead of dropping it
        #[arg(long)]
        keep: bool,
        /// One JSON line instead of the summary
        #[arg(long)]
        json: bool,
    },
    /// Search latency and recall: two stages against the exact scan
    Search {
        /// The model bundle
        #[arg(long, value_name = "DIR", default_value = "models/default")]
        bundle: PathBuf,
        /// Images whose embeddings (and noisy near-duplicates) fill the index
        #[arg(long, value_name = "DIR", default_value = "models/samples")]
        images: PathBuf,
        /// Entries in the index
        #[arg(long, default_value_t = 100_000)]
        entries: usize,
        /// Text queries to time
        #[arg(long, default_value_t = 50)]
        queries: usize,
        /// Time the exact scan only
        #[arg(long)]
        exact: bool,
        /// Candidates the first stage passes to exact rescoring
        #[arg(long, default_value_t = crate::index::search::CANDIDATES)]
        candidates: usize,
        /// One JSON line instead of the table
        #[arg(long)]
        json: bool,
    },
}

/// An approximate index kind of the fleet database (`fleet::ann`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AnnKind {
    Ivfflat,
    Hnsw,
}

#[cfg(feature = "fleet")]
#[derive(Debug, clap::Subcommand)]
pub enum Fleet {
    /// Send the entries of a board's index the database does not have yet: incremental,
    /// resumable after a kill, idempotent; entries that left the ring stay in the database
    Sync {
        /// The board's index directory (read only; the daemon may be running)
        #[arg(long, value_name = "DIR")]
        index: PathBuf,
        /// The board's name in the database (letters, digits, '-', '_', '.')
        #[arg(long, value_name = "NAME")]
        board: String,
        /// postgresql://USER:PASSWORD@HOST:PORT/DB (or the environment, keeping the password
        /// out of the process list)
        #[arg(
            long,
            value_name = "URL",
            env = "MOONLENS_FLEET_DB",
            hide_env_values = true
        )]
        db: String,
        /// Send the thumbnails too
        #[arg(long)]
        thumbs: bool,
        /// The bundle's approximate index: IVFFlat (rebuilt as rows grow) or HNSW; replaces
        /// another kind [default: the kind the bundle has, IVFFlat for a new one]
        #[arg(long, value_enum)]
        ann: Option<AnnKind>,
        /// The bundle that wrote the index, to record its name (only if the ids match)
        #[arg(long, value_name = "DIR", default_value = "models/default")]
        bundle: PathBuf,
    },
    /// Search the entries of every board in the database
    Search {
        /// What to look for, e.g. a red van
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// postgresql://USER:PASSWORD@HOST:PORT/DB
        #[arg(
            long,
            value_name = "URL",
            env = "MOONLENS_FLEET_DB",
            hide_env_values = true
        )]
        db: String,
        /// Only this board's entries
        #[arg(long, value_name = "NAME")]
        board: Option<String>,
        /// Only entries from then on: a span back from now (90s, 10m, 2h, 7d) or an RFC 3339
        /// time
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only entries before then (same forms as --since)
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Hits to return (1-1000)
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// The bundle that encodes the query: it must be the one the rows carry
        #[arg(long, value_name = "DIR", default_value = "models/default")]
        bundle: PathBuf,
        /// Rank every row exactly instead of walking the HNSW index
        #[arg(long)]
        exact: bool,
        /// Candidates an HNSW walk keeps (hnsw.ef_search, up to 1000): higher finds more of
        /// the exact top k, slower [default: 2k, at least 40; 400 with filters]
        #[arg(long, value_name = "N", conflicts_with = "exact")]
        ef: Option<usize>,
        /// Lists an IVFFlat scan reads (ivfflat.probes): higher finds more of the exact top
        /// k, slower [default: sqrt(lists); 4x with filters]
        #[arg(long, value_name = "N", conflicts_with = "exact")]
        probes: Option<usize>,
        /// One JSON line instead of the table
        #[arg(long)]
        json: bool,
    },
}

/// The command definition (for completions and the man page).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("moonlens-host").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn help_works_on_every_subcommand_and_shows_defaults() {
        for args in [
            &["--help"][..],
            &["train", "--help"],
            &["train", "--pairs", "a", "--help"],
            &["bench", "search", "--help"],
            &["fuzz", "--help"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
        }
        let help = parse(&["train", "--help"]).unwrap_err().to_string();
        for line in ["--patience", "[default: 3]", "--from-index", "raw, bridge"] {
            assert!(help.contains(line), "{line} missing from\n{help}");
        }
        let top = parse(&["--help"]).unwrap_err().to_string();
        assert!(!top.contains("index-writer"), "{top}");
    }

    #[test]
    fn training_options_parse_and_defaults_come_from_the_config() {
        let Cmd::Train(t) = parse(&[
            "train",
            "--pairs",
            "a.jsonl,b.jsonl",
            "--val",
            "v.jsonl",
            "--out",
            "o",
            "--lr",
            "0.01",
        ])
        .unwrap()
        .cmd
        else {
            panic!("not train")
        };
        assert_eq!(
            t.training.pairs,
            [PathBuf::from("a.jsonl"), "b.jsonl".into()]
        );
        let c = t.training.config();
        let d = train::Config::default();
        assert_eq!((c.lr, c.batch, c.patience), (0.01, d.batch, d.patience));
        assert_eq!((t.dim, t.temperature), (d.dim, d.temperature));
        assert!(t.from_index.is_none());
    }

    #[test]
    fn bad_arguments_are_named_and_typos_get_a_suggestion() {
        let e = parse(&[
            "train",
            "--pairs",
            "a",
            "--val",
            "v",
            "--out",
            "o",
            "--paitence",
            "3",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--paitence") && e.contains("--patience"), "{e}");
        let e = parse(&["bench", "search", "--entries", "2.5"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("2.5") && e.contains("--entries"), "{e}");
        let e = parse(&["train", "--val", "v", "--out", "o"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--pairs"), "{e}");
        for flag in ["--epochs", "--batch"] {
            let args = [
                "train", "--pairs", "a", "--val", "v", "--out", "o", flag, "0",
            ];
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains("at least 1"), "{e}");
        }
        // each form of train refuses the other's options
        let site = [
            "train",
            "--pairs",
            "a",
            "--val",
            "v",
            "--out",
            "o",
            "--from-index",
            "i",
        ];
        let e = parse(&[&site[..], &["--dim", "64"]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--dim") && e.contains("--from-index"), "{e}");
        let e = parse(&[
            "train", "--pairs", "a", "--val", "v", "--out", "o", "--repeat", "2",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--from-index"), "{e}");
        assert!(parse(&site).is_ok());
        let e = parse(&["fuzz", "protcol"]).unwrap_err().to_string();
        assert!(e.contains("protocol"), "{e}");
    }
}
