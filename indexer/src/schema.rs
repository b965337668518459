//! The one Tantivy schema every partition index uses, and the tokenizers it names.
//!
//! Exact fields (`level`, `host`, `source`, `stream`, `container.*`) match whole values, case
//! insensitively; `message` and the `fields` JSON are full text with positions, so phrases work.
//! Each document stores only `_source` (the event as JSON) plus its partition and offset: a hit is
//! returned as the event that was indexed.

use std::path::Path;

use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, IndexRecordOption, JsonObjectOptions, NumericOptions,
    Schema, TextFieldIndexing, TextOptions, STORED,
};
use tantivy::tokenizer::{LowerCaser, RawTokenizer, TextAnalyzer, TokenizerManager};
use tantivy::Index;

/// Whole value, lower-cased: `level:ERROR` finds `error`.
const KEYWORD: &str = "keyword";
/// Tantivy's default: words split at non-alphanumerics, lower-cased, over-long tokens dropped.
const WORDS: &str = "default";

/// Field handles of the log schema.
#[derive(Clone)]
pub struct LogSchema {
    pub schema: Schema,
    pub id: Field,
    pub timestamp: Field,
    pub message: Field,
    pub level: Field,
    pub host: Field,
    pub source: Field,
    pub stream: Field,
    pub container: Field,
    pub fields: Field,
    pub partition: Field,
    pub offset: Field,
    pub source_doc: Field,
}

impl LogSchema {
    pub fn new() -> Self {
        let mut builder = Schema::builder();
        let keyword = TextOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(KEYWORD)
                    .set_index_option(IndexRecordOption::Basic),
            )
            .set_fast("raw");
        let words = TextFieldIndexing::default()
            .set_tokenizer(WORDS)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let id = builder.add_text_field(
            "id",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_index_option(IndexRecordOption::Basic),
            ),
        );
        let timestamp = builder.add_date_field(
            "timestamp",
            DateOptions::default()
                .set_indexed()
                .set_fast()
                .set_precision(DateTimePrecision::Milliseconds),
        );
        let message = builder.add_text_field(
            "message",
            TextOptions::default().set_indexing_options(words.clone()),
        );
        let level = builder.add_text_field("level", keyword.clone());
        let host = builder.add_text_field("host", keyword.clone());
        let source = builder.add_text_field("source", keyword.clone());
        let stream = builder.add_text_field("stream", keyword);
        let container = builder.add_json_field(
            "container",
            JsonObjectOptions::default()
                .set_indexing_options(
                    TextFieldIndexing::default()
                        .set_tokenizer(KEYWORD)
                        .set_index_option(IndexRecordOption::Basic),
                )
                .set_fast("raw")
                .set_expand_dots_enabled(),
        );
        let fields = builder.add_json_field(
            "fields",
            JsonObjectOptions::default()
                .set_indexing_options(words)
                .set_fast("raw")
                .set_expand_dots_enabled(),
        );
        let located = NumericOptions::default()
            .set_indexed()
            .set_fast()
            .set_stored();
        let partition = builder.add_u64_field("partition", located.clone());
        let offset = builder.add_u64_field("offset", located);
        let source_doc = builder.add_text_field("_source", STORED);
        Self {
            schema: builder.build(),
            id,
            timestamp,
            message,
            level,
            host,
            source,
            stream,
            container,
            fields,
            partition,
            offset,
            source_doc,
        }
    }

    /// Creates the index in `dir`, or opens the one there.
    pub fn open_or_create(&self, dir: &Path) -> tantivy::Result<Index> {
        let has_index = dir.join("meta.json").exists();
        let mut index = if has_index {
            Index::open_in_dir(dir)?
        } else {
            std::fs::create_dir_all(dir)?;
            Index::create_in_dir(dir, self.schema.clone())?
        };
        register_tokenizers(&mut index);
        Ok(index)
    }

    /// Opens an existing index for reading.
    pub fn open(&self, dir: &Path) -> tantivy::Result<Index> {
        let mut index = Index::open_in_dir(dir)?;
        register_tokenizers(&mut index);
        Ok(index)
    }

    /// Fields a query word without `field:` searches.
    pub fn default_search_fields(&self) -> Vec<Field> {
        vec![self.message]
    }
}

impl Default for LogSchema {
    fn default() -> Self {
        Self::new()
    }
}

/// Tantivy's tokenizers plus ours; indexes and the query parser must agree on them.
pub fn tokenizers() -> TokenizerManager {
    let manager = TokenizerManager::default();
    manager.register(
        KEYWORD,
        TextAnalyzer::builder(RawTokenizer::default())
            .filter(LowerCaser)
            .build(),
    );
    manager
}

fn register_tokenizers(index: &mut Index) {
    index.set_tokenizers(tokenizers());
}
