//! docker's `--format` for husk's listings (`ps`, `volume ls`, `network
//! ls`, `image ls`): `json` (an object a line), `table TEMPLATE` (a header
//! of the columns' titles, the columns lined up) or `TEMPLATE` (a line
//! each), the templates Go's (see [`crate::template`]) over each row's
//! fields.

use serde_json::{Map, Value};

use crate::template::Template;

pub(crate) enum Format {
    Json,
    Table(Template),
    Lines(Template),
}

impl Format {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        if text == "json" {
            return Ok(Format::Json);
        }
        let (table, body) = match text.strip_prefix("table") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        // `\t` as docker takes it: a tab between columns.
        let template = Template::parse(&body.replace("\\t", "\t"))
            .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
        Ok(if table {
            Format::Table(template)
        } else {
            Format::Lines(template)
        })
    }

    /// Whether `field` is shown (what costs to find is found only then).
    pub(crate) fn shows(&self, field: &str) -> bool {
        match self {
            Format::Json => true,
            Format::Table(t) | Format::Lines(t) => t.names_field(field),
        }
    }

    /// `rows` as asked; `columns` are each field and its title (for a
    /// table's header).
    pub(crate) fn print(&self, columns: &[(&str, &str)], rows: &[Value]) -> anyhow::Result<()> {
        let render =
            |t: &Template, row: &Value| t.render(row).map_err(|e| anyhow::anyhow!("--format: {e}"));
        match self {
            Format::Json => {
                for row in rows {
                    println!("{row}");
                }
            }
            Format::Lines(t) => {
                for row in rows {
                    println!("{}", render(t, row)?);
                }
            }
            Format::Table(t) => {
                let cells = |line: String| -> Vec<String> {
                    line.split('\t').map(|c| c.trim().to_string()).collect()
                };
                let titles: Map<String, Value> = columns
                    .iter()
                    .map(|(field, title)| (field.to_string(), Value::from(*title)))
                    .collect();
                let mut table = vec![cells(render(t, &titles.into())?)];
                for row in rows {
                    table.push(cells(render(t, row)?));
                }
                super::print_columns(&table);
            }
        }
        Ok(())
    }
}

/// A row of text fields, in `columns`' order.
pub(crate) fn row(columns: &[(&str, &str)], value: impl Fn(&str) -> String) -> Value {
    columns
        .iter()
        .map(|(field, _)| (field.to_string(), Value::from(value(field))))
        .collect::<Map<_, _>>()
        .into()
}
