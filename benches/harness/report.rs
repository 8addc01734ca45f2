//! The benchmark's output: a Markdown table of every figure, in the order
//! measured, each also logged to stderr as it is taken.

#[derive(Default)]
pub struct Report {
    /// What the run measured.
    pub title: String,
    lines: Vec<(String, f64, String)>,
}

impl Report {
    pub fn line(&mut self, what: &str, value: f64, unit: &str) {
        eprintln!("bench: {what}: {value:.2} {unit}");
        self.lines.push((what.to_string(), value, unit.to_string()));
    }

    pub fn print(&self, full: bool) {
        println!("\n## end-to-end benchmark{}: {}", if full { "" } else { " (small test run)" }, self.title);
        println!("| measure | value | unit |\n| --- | ---: | --- |");
        for (what, value, unit) in &self.lines {
            let value = if value.fract() == 0.0 || value.abs() >= 1000.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            };
            println!("| {what} | {value} | {unit} |");
        }
    }
}
