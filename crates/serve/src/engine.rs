//! The scheduler: one thread owns the model and runs continuous batching.
//!
//! Requests wait in a bounded queue (full: the caller answers 429), one message per request
//! with a job per prompt. Whenever the running batch has room, the scheduler takes every queued
//! request that fits, prefills all their prompts in one forward (left-padded with masked keys,
//! as `generate` batches prompts) into a new [`KvCache`] and joins it to the batch cache
//! ([`KvCache::append_rows`], padded the same way so each row keeps its own positions); then it
//! runs one decode step for every running row at once. Prefills of newcomers are thus
//! interleaved with the decoding of the others. A job with `n` samples prefills its prompt once
//! and copies that cache row `n` times ([`KvCache::retain_rows`] with a repeated index). A row leaves the batch when it finishes or
//! its client goes away (its event channel is closed), so a disconnect frees the slot at the next
//! step.
//!
//! Each row names its own adapters: the model routes row `i` through its adapters' A and B, each
//! scaled by its weight ([`LoraModel::set_row_mixes`]), S-LoRA/Punica style; no adapter is merged
//! into the shared weights. Adapters are loaded and removed between steps.
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::prefix::{PrefixStore, blocks_of};
use burn::tensor::Tensor;
use kiln_lora::{Bias, LoraConfig, LoraModel, RowMix};
use kiln_models::generate::pick_token;
use kiln_models::{CausalLm, DecoderInput, FinishReason, GenerationConfig, KvCache};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Prompts that prefill together from kept prefixes: (prefix length, rest length).
type Shared = (usize, usize);

/// One prompt to continue, `n = events.len()` times from one prefill.
#[derive(Debug)]
pub struct Job {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// `max_new_tokens`, sampling, seed and EOS ids; stop strings are the caller's business.
    /// Sample `j` draws with seed `config.seed + j`.
    pub config: GenerationConfig,
    /// The adapters and their weights (empty: the base model; `[(name, 1.0)]`: one adapter).
    pub adapters: RowMix,
    /// Where the tokens of each sample go; dropping a receiver cancels that sample.
    pub events: Vec<mpsc::UnboundedSender<Event>>,
}

impl Job {
    fn fail(&self, e: &ApiError) {
        for tx in &self.events {
            let _ = tx.send(Event::Failed(e.clone()));
        }
    }
}

/// What the scheduler tells the caller about a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(u32),
    Done(FinishReason),
    Failed(ApiError),
}

enum Msg {
    /// The jobs of one request, admitted together.
    Jobs(Vec<Job>),
    /// A control message is waiting.
    Wake,
}

enum Control {
    Load {
        name: String,
        path: PathBuf,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Unload {
        name: String,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
}

/// Limits of the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Rows decoded together at most.
    pub max_batch: usize,
    /// Requests waiting beyond the running batch at most (more: 429).
    pub max_queue: usize,
    /// Bytes of prompt prefixes' keys and values kept for later prompts that start the same
    /// way (prefix caching; 0: off). See `prefix.rs`.
    pub prefix_cache_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_queue: 64,
            prefix_cache_bytes: 64 << 20,
        }
    }
}

/// The handle the HTTP side holds; cloning it is cheap. The scheduler thread ends when every
/// handle is dropped and the running rows are done.
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Msg>,
    controls: std::sync::mpsc::Sender<Control>,
    adapters: Arc<RwLock<Vec<String>>>,
    /// Tokens a prompt plus its completion may hold (`max_position_embeddings`).
    pub context_len: usize,
    pub vocab_size: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("context_len", &self.context_len)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the scheduler thread on `model`.
    pub fn start(
        model: CausalLm,
        options: EngineOptions,
        metrics: Arc<Metrics>,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(options.max_queue.max(1));
        let (controls, control_rx) = std::sync::mpsc::channel();
        let adapters = Arc::new(RwLock::new(Vec::new()));
        let engine = Self {
            jobs,
            controls,
            adapters: adapters.clone(),
            context_len: model.config.max_position_embeddings,
            vocab_size: model.config.vocab_size,
        };
        let scheduler = Scheduler {
            lora: LoraModel::new(model),
            cache: KvCache::default(),
            rows: Vec::new(),
            queue,
            controls: control_rx,
            adapters,
            metrics,
            max_batch: options.max_batch.max(1),
            held: None,
            prefix: PrefixStore::new(options.prefix_cache_bytes),
        };
        let handle = std::thread::Builder::new()
            .name("kiln-scheduler".into())
            .spawn(move || scheduler.run())
            .expect("spawning the scheduler thread");
        (engine, handle)
    }

    /// Queues the jobs of one request (one per prompt); they join the batch together.
    ///
    /// # Errors
    /// 429 when the queue is full, 503 when the scheduler has stopped.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<(), ApiError> {
        self.jobs.try_send(Msg::Jobs(jobs)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::too_many("the request queue is full; retry later")
            }
            mpsc::error::TrySendError::Closed(_) => ApiError::unavailable(),
        })
    }

    /// Requests waiting for a slot in the running batch.
    pub fn queue_depth(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Names of the loaded adapters, in load order.
    pub fn adapters(&self) -> Vec<String> {
        self.adapters.read().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn has_adapter(&self, name: &str) -> bool {
        self.adapters
            .read()
            .is_ok_and(|a| a.iter().any(|n| n == name))
    }

    /// Loads the PEFT adapter in `path` as `name`, between two decode steps.
    pub async fn load_adapter(&self, name: &str, path: PathBuf) -> Result<(), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.control(Control::Load {
            name: name.to_string(),
            path,
            reply,
        })?;
        rx.await.map_err(|_| ApiError::unavailable())?
    }

    /// Removes adapter `name`; refused while a running request uses it.
    pub async fn unload_adapter(&self, name: &str) -> Result<(), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.control(Control::Unload {
            name: name.to_string(),
            reply,
        })?;
        rx.await.map_err(|_| ApiError::unavailable())?
    }

    fn control(&self, c: Control) -> Result<(), ApiError> {
        self.controls.send(c).map_err(|_| ApiError::unavailable())?;
        // Wakes an idle scheduler; a full queue means it is busy and polls controls anyway.
        let _ = self.jobs.try_send(Msg::Wake);
        Ok(())
    }
}

/// One running sequence.
struct Row {
    events: mpsc::UnboundedSender<Event>,
    config: GenerationConfig,
    adapters: RowMix,
    rng: StdRng,
    /// Prompt and generated ids (repetition penalty reads them).
    history: Vec<u32>,
    generated: usize,
    last: u32,
    finished: bool,
}

struct Scheduler {
    lora: LoraModel<CausalLm>,
    /// The batch cache: row `i` is `rows[i]`.
    cache: KvCache,
    rows: Vec<Row>,
    queue: mpsc::Receiver<Msg>,
    controls: std::sync::mpsc::Receiver<Control>,
    adapters: Arc<RwLock<Vec<String>>>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    /// A request taken from the queue that waits for room for all its samples.
    held: Option<Vec<Job>>,
    /// Kept prompt prefixes (prefix caching).
    prefix: PrefixStore,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            self.apply_controls();
            if !self.fill() {
                return;
            }
            self.metrics.set_batch_size(self.rows.len());
            if !self.rows.is_empty() {
                // On rayon's pool (`kiln_cpu::on_pool`): 1 client 73 -> 106, 32 clients 361 -> 468
                // tokens/s on SmolLM2. Waiting for requests stays on this thread.
                kiln_cpu::on_pool(|| self.step());
                self.sweep();
            }
            self.metrics.set_batch_size(self.rows.len());
        }
    }

    /// Takes queued requests while the batch has room for all the samples of the next one (a
    /// request with more samples than `max_batch` runs alone) and admits them with one prefill.
    /// `false` once every handle is gone and no row runs.
    fn fill(&mut self) -> bool {
        let mut taken: Vec<Job> = Vec::new();
        let mut rows = self.rows.len();
        while rows < self.max_batch {
            let jobs = match self.held.take() {
                Some(jobs) => jobs,
                None => {
                    let msg = if rows == 0 {
                        match self.queue.blocking_recv() {
                            Some(m) => m,
                            None => return false,
                        }
                    } else {
                        match self.queue.try_recv() {
                            Ok(m) => m,
                            Err(_) => break,
                        }
                    };
                    match msg {
                        Msg::Wake => {
                            self.apply_controls();
                            continue;
                        }
                        Msg::Jobs(jobs) => jobs,
                    }
                }
            };
            let need: usize = jobs.iter().map(|j| j.events.len()).sum();
            if rows > 0 && rows + need > self.max_batch {
                self.held = Some(jobs);
                break;
            }
            rows += need.max(1);
            taken.extend(jobs);
        }
        if !taken.is_empty() {
            kiln_cpu::on_pool(|| self.admit(taken));
            self.sweep();
        }
        true
    }

    fn apply_controls(&mut self) {
        while let Ok(c) = self.controls.try_recv() {
            match c {
                Control::Load { name, path, reply } => {
                    let _ = reply.send(self.load(&name, path));
                }
                Control::Unload { name, reply } => {
                    let _ = reply.send(self.unload(&name));
                }
            }
        }
    }

    fn load(&mut self, name: &str, path: PathBuf) -> Result<(), ApiError> {
        if self.lora.config(name).is_some() {
            return Err(ApiError::conflict(format!(
                "adapter `{name}` is already loaded"
            )));
        }
        let config = LoraConfig::from_file(&path.join("adapter_config.json"))
            .map_err(|e| ApiError::invalid_param("path", e.to_string()))?;
        // Both would overwrite tensors of the shared base model in place.
        if config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_empty())
            || config.bias != Bias::None
        {
            return Err(ApiError::invalid_param(
                "path",
                format!(
                    "{}: adapters with modules_to_save or trained biases change the shared \
                     base weights and cannot be served per request",
                    path.display()
                ),
            ));
        }
        self.lora
            .load_adapter(&path, name)
            .map_err(|e| ApiError::invalid_param("path", e.to_string()))?;
        // Rows choose their adapters; none is active for the whole model.
        let _ = self.lora.set_active(&[]);
        // A new adapter under an old name would otherwise find the old one's keys.
        self.prefix.clear();
        if let Ok(mut a) = self.adapters.write() {
            a.push(name.to_string());
        }
        Ok(())
    }

    fn unload(&mut self, name: &str) -> Result<(), ApiError> {
        let users = self
            .rows
            .iter()
            .filter(|r| r.adapters.iter().any(|(n, _)| n == name))
            .count();
        if users > 0 {
            return Err(ApiError::conflict(format!(
                "adapter `{name}` is in use by {users} running request(s)"
            )));
        }
        self.lora
            .delete_adapter(name)
            .map_err(|_| ApiError::not_found(format!("no adapter `{name}`"), "model_not_found"))?;
        if let Ok(mut a) = self.adapters.write() {
            a.retain(|n| n != name);
        }
        self.prefix.clear();
        Ok(())
    }

    /// Whether `job` can run: some sample still has a reader and its adapters are loaded and
    /// may be mixed; otherwise the job is failed (or dropped) here.
    fn runnable(&mut self, job: &Job) -> bool {
        if job.events.iter().all(mpsc::UnboundedSender::is_closed) {
            return false;
        }
        if let Some((a, _)) = job
            .adapters
            .iter()
            .find(|(a, _)| self.lora.config(a).is_none())
        {
            job.fail(&ApiError::not_found(
                format!("adapter `{a}` is not loaded"),
                "model_not_found",
            ));
            return false;
        }
        if let Err(e) = self
            .lora
            .set_row_mixes(Some(std::slice::from_ref(&job.adapters)))
        {
            job.fail(&ApiError::invalid_param("model", e.to_string()));
            return false;
        }
        true
    }

    /// Prefills the prompts of `jobs`, each row through its own adapters. A prompt that starts
    /// with a kept prefix runs only its remaining tokens on a copy of that prefix's cache
    /// (prompts with the same prefix and remaining lengths together, so no padding falls
    /// between a prefix and the rest); the others run in one left-padded forward. The new
    /// prompts' prefixes are kept for later prompts.
    ///
    /// # Shapes
    /// - output: logits `jobs.len() * vocab` (last position of each prompt), a cache of
    ///   `jobs.len()` rows, both in the order of `jobs`
    fn prefill(&mut self, jobs: &[Job]) -> Result<(Vec<f32>, KvCache), String> {
        let mut cold = Vec::new();
        let mut warm: Vec<(Shared, Vec<(usize, KvCache)>)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let found = if self.prefix_allowed(job.prompt.len()) {
                self.prefix.lookup(&job.adapters, &job.prompt)
            } else {
                None
            };
            self.metrics
                .prefix_lookup(job.prompt.len(), found.as_ref().map_or(0, |f| f.0));
            match found {
                Some((len, cache)) => {
                    let key = (len, job.prompt.len() - len);
                    match warm.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, group)) => group.push((i, cache)),
                        None => warm.push((key, vec![(i, cache)])),
                    }
                }
                None => cold.push(i),
            }
        }
        // Row r of `cache` is job `order[r]`.
        let (mut order, mut logits, mut cache) = (Vec::new(), Vec::new(), KvCache::default());
        let mut join = |rows: Vec<usize>, (l, c): (Vec<f32>, KvCache)| -> Result<(), String> {
            order.extend(rows);
            logits.push(l);
            cache.append_rows(c).map_err(|e| e.to_string())
        };
        if !cold.is_empty() {
            let prompts: Vec<&[u32]> = cold.iter().map(|&i| jobs[i].prompt.as_slice()).collect();
            let mixes: Vec<RowMix> = cold.iter().map(|&i| jobs[i].adapters.clone()).collect();
            let done = self.prefill_rows(&prompts, &mixes)?;
            self.keep_prefixes(jobs, &cold, &done.1, 0);
            join(cold, done)?;
        }
        for ((len, _), group) in warm {
            let rows: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
            let done = self.extend_rows(jobs, group)?;
            self.keep_prefixes(jobs, &rows, &done.1, len);
            join(rows, done)?;
        }
        let vocab = logits.iter().map(Vec::len).sum::<usize>() / jobs.len().max(1);
        let logits = logits.concat();
        let mut row_of = vec![0; jobs.len()];
        for (r, &j) in order.iter().enumerate() {
            row_of[j] = r;
        }
        cache.retain_rows(&row_of).map_err(|e| e.to_string())?;
        let logits = row_of
            .iter()
            .flat_map(|&r| logits[r * vocab..(r + 1) * vocab].iter().copied())
            .collect();
        Ok((logits, cache))
    }

    /// Whether a prompt of `n` tokens may share prefixes: not past LongRoPE's original context,
    /// where a whole prefill switches every position to the long frequencies.
    fn prefix_allowed(&self, n: usize) -> bool {
        self.lora.model.recompute_cache_at().is_none_or(|o| n <= o)
    }

    /// Runs the rest of each prompt of `group` (jobs with prefixes of one length and rests of
    /// one length) from its prefix's cache in one forward: the logits of each last position
    /// and the rows' caches.
    fn extend_rows(
        &mut self,
        jobs: &[Job],
        group: Vec<(usize, KvCache)>,
    ) -> Result<(Vec<f32>, KvCache), String> {
        let (mut ids, mut mixes, mut cache) = (Vec::new(), Vec::new(), KvCache::default());
        let mut rest = 0;
        for (i, prefix) in group {
            let len = prefix.len();
            rest = jobs[i].prompt.len() - len;
            ids.extend_from_slice(&jobs[i].prompt[len..]);
            mixes.push(jobs[i].adapters.clone());
            cache.append_rows(prefix).map_err(|e| e.to_string())?;
        }
        let b = mixes.len();
        let input = DecoderInput::new(ids, b, rest).with_rope_per_row();
        self.lora
            .set_row_mixes(Some(&mixes))
            .map_err(|e| e.to_string())?;
        let hidden = self
            .lora
            .model
            .forward_hidden(&input, Some(&mut cache))
            .map_err(|e| e.to_string())?;
        let logits = self.last_logits(hidden)?;
        self.metrics.prefill(b, b * rest);
        Ok((logits, cache))
    }

    /// Keeps the prefix (whole blocks) of each prompt `jobs[rows[r]]` from row `r` of its
    /// prefill's `cache`, where it is longer than the `known` tokens the prompt started from.
    fn keep_prefixes(&mut self, jobs: &[Job], rows: &[usize], cache: &KvCache, known: usize) {
        for (r, &i) in rows.iter().enumerate() {
            let prompt = &jobs[i].prompt;
            let len = blocks_of(prompt.len());
            if len <= known || !self.prefix_allowed(prompt.len()) {
                continue;
            }
            match cache.prefix(r, len) {
                Ok(c) => self
                    .prefix
                    .insert(&jobs[i].adapters, prompt[..len].to_vec(), c),
                Err(e) => tracing::error!("keeping a prompt prefix: {e}"),
            }
        }
        self.metrics.set_prefix_cache_bytes(self.prefix.bytes());
    }

    /// One left-padded forward over `prompts`, each row through its own adapters: the logits of
    /// each last position and a cache of `prompts.len()` rows.
    fn prefill_rows(
        &mut self,
        prompts: &[&[u32]],
        mixes: &[RowMix],
    ) -> Result<(Vec<f32>, KvCache), String> {
        let (b, t) = (
            prompts.len(),
            prompts.iter().map(|p| p.len()).max().unwrap_or(0),
        );
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for prompt in prompts {
            let pad = t - prompt.len();
            ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().copied()));
            mask.extend(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, t - pad)));
        }
        let mut input = DecoderInput::new(ids, b, t).with_rope_per_row();
        if mask.contains(&0) {
            input = input.with_attention_mask(mask);
        }
        self.lora
            .set_row_mixes(Some(mixes))
            .map_err(|e| e.to_string())?;
        let mut cache = KvCache::default();
        let hidden = self
            .lora
            .model
            .forward_hidden(&input, Some(&mut cache))
            .map_err(|e| e.to_string())?;
        let logits = self.last_logits(hidden)?;
        self.metrics
            .prefill(b, prompts.iter().map(|p| p.len()).sum());
        Ok((logits, cache))
    }

    /// Prefills the prompts of `jobs` in one forward, copies each prompt's cache row for each of
    /// its samples and joins them to the running batch; each sample then draws its first token
    /// from its prompt's logits with its own seed.
    fn admit(&mut self, jobs: Vec<Job>) {
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| self.runnable(j)).collect();
        if jobs.is_empty() {
            return;
        }
        let copies: Vec<usize> = jobs
            .iter()
            .enumerate()
            .flat_map(|(i, j)| std::iter::repeat_n(i, j.events.len()))
            .collect();
        let joined = self.prefill(&jobs).and_then(|(logits, mut cache)| {
            cache.retain_rows(&copies).map_err(|e| e.to_string())?;
            self.cache.append_rows(cache).map_err(|e| e.to_string())?;
            Ok(logits)
        });
        let logits = match joined {
            Ok(l) => l,
            Err(e) => {
                for job in &jobs {
                    job.fail(&ApiError::internal(&e));
                }
                return;
            }
        };
        let vocab = logits.len() / jobs.len();
        for (i, job) in jobs.into_iter().enumerate() {
            for (j, events) in job.events.into_iter().enumerate() {
                let mut config = job.config.clone();
                config.seed = config.seed.wrapping_add(j as u64);
                let mut row = Row {
                    rng: StdRng::seed_from_u64(config.seed),
                    events,
                    config,
                    adapters: job.adapters.clone(),
                    history: job.prompt.clone(),
                    generated: 0,
                    last: 0,
                    finished: false,
                };
                let mut row_logits = logits[i * vocab..(i + 1) * vocab].to_vec();
                let id = pick_token(&mut row_logits, &row.history, &row.config, &mut row.rng);
                self.rows.push(row);
                let r = self.rows.len() - 1;
                self.emit(r, id);
            }
        }
    }

    /// Logits of the last position of every row.
    ///
    /// # Shapes
    /// - hidden: `[b, t, d]`; output `b * vocab` values
    fn last_logits(&self, hidden: Tensor<3>) -> Result<Vec<f32>, String> {
        let [b, t, d] = hidden.dims();
        let last = hidden.slice([0..b, t - 1..t, 0..d]);
        self.lora
            .model
            .logits(last)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| format!("reading logits: {e:?}"))
    }

    /// One decode step for every running row. Rows whose next token crosses LongRoPE's
    /// original context are recomputed whole instead (see [`Self::recompute`]).
    fn step(&mut self) {
        let crossing = self.take_crossing_rows();
        if !self.rows.is_empty() {
            self.decode();
        }
        if !crossing.is_empty() {
            self.recompute(crossing);
        }
    }

    /// Removes, with their cache rows, the rows whose cache holds exactly LongRoPE's original
    /// context: their next token switches every position to the long frequencies.
    fn take_crossing_rows(&mut self) -> Vec<Row> {
        let Some(original) = self.lora.model.recompute_cache_at() else {
            return Vec::new();
        };
        let crossing = |r: &Row| r.history.len() == original + 1;
        if !self.rows.iter().any(crossing) {
            return Vec::new();
        }
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&i| !crossing(&self.rows[i]))
            .collect();
        if let Err(e) = self.cache.retain_rows(&keep) {
            tracing::error!("dropping cache rows: {e}");
        }
        let (taken, kept) = std::mem::take(&mut self.rows)
            .into_iter()
            .partition(|r| crossing(r));
        self.rows = kept;
        taken
    }

    /// Runs each row's whole sequence again with a fresh cache (LongRoPE past its original
    /// context: every key is recomputed with the long frequencies, as transformers does for
    /// Phi-3 and as `generate` does), joins the new cache rows to the batch and draws each row's
    /// next token from the recomputed logits.
    fn recompute(&mut self, rows: Vec<Row>) {
        let prompts: Vec<&[u32]> = rows.iter().map(|r| r.history.as_slice()).collect();
        let mixes: Vec<RowMix> = rows.iter().map(|r| r.adapters.clone()).collect();
        let joined = self
            .prefill_rows(&prompts, &mixes)
            .and_then(|(logits, cache)| {
                self.cache.append_rows(cache).map_err(|e| e.to_string())?;
                Ok(logits)
            });
        let logits = match joined {
            Ok(l) => l,
            Err(e) => {
                for row in rows {
                    let _ = row.events.send(Event::Failed(ApiError::internal(&e)));
                }
                return;
            }
        };
        let vocab = logits.len() / rows.len();
        for (i, row) in rows.into_iter().enumerate() {
            self.rows.push(row);
            let r = self.rows.len() - 1;
            let mut row_logits = logits[i * vocab..(i + 1) * vocab].to_vec();
            let row = &mut self.rows[r];
            let id = pick_token(&mut row_logits, &row.history, &row.config, &mut row.rng);
            self.emit(r, id);
        }
    }

    /// One decode step for every running row: each feeds its last token.
    fn decode(&mut self) {
        let started = Instant::now();
        let b = self.rows.len();
        let ids: Vec<u32> = self.rows.iter().map(|r| r.last).collect();
        let adapters: Vec<RowMix> = self.rows.iter().map(|r| r.adapters.clone()).collect();
        let input = DecoderInput::new(ids, b, 1)
            .with_attention_mask(vec![1; b])
            .with_rope_per_row();
        let result = self
            .lora
            .set_row_mixes(Some(&adapters))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let hidden = self
                    .lora
                    .model
                    .forward_hidden(&input, Some(&mut self.cache))
                    .map_err(|e| e.to_string())?;
                self.last_logits(hidden)
            });
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                for row in &mut self.rows {
                    let _ = row.events.send(Event::Failed(ApiError::internal(&e)));
                    row.finished = true;
                }
                return;
            }
        };
        let vocab = logits.len() / b;
        for i in 0..b {
            let mut row_logits = logits[i * vocab..(i + 1) * vocab].to_vec();
            let row = &mut self.rows[i];
            let id = pick_token(&mut row_logits, &row.history, &row.config, &mut row.rng);
            self.emit(i, id);
        }
        self.metrics.observe_step(started.elapsed(), b);
    }

    /// Sends token `id` of row `i` and decides whether the row is done.
    fn emit(&mut self, i: usize, id: u32) {
        let context = self.lora.model.config.max_position_embeddings;
        let row = &mut self.rows[i];
        row.history.push(id);
        row.generated += 1;
        row.last = id;
        if row.events.send(Event::Token(id)).is_err() {
            row.finished = true;
            return;
        }
        let finish = if row.config.eos_token_ids.contains(&id) {
            Some(FinishReason::Eos)
        } else if row.generated >= row.config.max_new_tokens || row.history.len() >= context {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(f) = finish {
            let _ = row.events.send(Event::Done(f));
            row.finished = true;
        }
    }

    /// Drops finished rows and rows whose client went away, with their cache rows.
    ///
    /// The last running rows move into the holes the finished ones leave (the cache moves one
    /// row per hole in place, instead of every row after the first hole).
    fn sweep(&mut self) {
        let alive: Vec<bool> = (self.rows.iter())
            .map(|r| !r.finished && !r.events.is_closed())
            .collect();
        let n = alive.iter().filter(|&&a| a).count();
        if n == self.rows.len() {
            return;
        }
        let mut tail: Vec<usize> = (n..alive.len()).filter(|&r| alive[r]).collect();
        let keep: Vec<usize> = (0..n)
            .map(|i| match alive[i] {
                true => i,
                false => tail
                    .pop()
                    .expect("as many running rows past n as holes before it"),
            })
            .collect();
        if let Err(e) = self.cache.retain_rows(&keep) {
            tracing::error!("dropping cache rows: {e}");
            self.cache = KvCache::default();
            self.rows.clear();
            return;
        }
        let mut rows: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        self.rows = keep.iter().filter_map(|&r| rows[r].take()).collect();
    }
}
