//! One finding of the preflight: what is wrong and how to fix it.

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n    fix: {}", self.problem, self.fix)
    }
}
