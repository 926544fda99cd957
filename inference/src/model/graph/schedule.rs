//! The order steps run in and when each value is freed: shared by both engines.

use super::GraphError;

/// A step's place in the data flow: the slots it reads and the one it writes.
pub(crate) trait Wired {
    fn inputs(&self) -> &[usize];
    fn output(&self) -> usize;
}

/// How many steps read each slot, the graph's output counting as one more reader: a value
/// read once can be folded into the step that reads it.
pub(crate) fn readers<S: Wired>(steps: &[S], slots: usize, graph_output: usize) -> Vec<usize> {
    let mut readers = vec![0usize; slots];
    readers[graph_output] += 1;
    for step in steps {
        for &slot in step.inputs() {
            readers[slot] += 1;
        }
    }
    readers
}

/// Runs steps in order over slots, shared by both engines.
#[derive(Debug)]
pub(crate) struct Schedule {
    input_slot: usize,
    output_slot: usize,
    slots: usize,
    /// For each slot, the index of the last step that reads it; the value is moved out then,
    /// so intermediate feature maps are freed as early as possible (and, on the native
    /// engine, may be overwritten in place).
    last_use: Vec<usize>,
}

impl Schedule {
    pub(crate) fn new<S: Wired>(
        steps: &[S],
        input_slot: usize,
        output_slot: usize,
        slots: usize,
    ) -> Self {
        let mut last_use = vec![usize::MAX; slots];
        for (index, step) in steps.iter().enumerate() {
            for &slot in step.inputs() {
                last_use[slot] = index;
            }
        }
        Self {
            input_slot,
            output_slot,
            slots,
            last_use,
        }
    }

    /// Feeds `input` through `steps`, calling `run` with each step's operands.
    pub(crate) fn run<S: Wired, V: Clone>(
        &self,
        steps: &[S],
        input: V,
        mut run: impl FnMut(&S, Vec<V>) -> Result<V, GraphError>,
    ) -> Result<V, GraphError> {
        let mut slots: Vec<Option<V>> = vec![None; self.slots];
        slots[self.input_slot] = Some(input);
        for (index, step) in steps.iter().enumerate() {
            let inputs = step.inputs();
            let args: Vec<V> = (inputs.iter().enumerate())
                .map(|(at, &slot)| {
                    // A slot read twice by its last reader (a chained block's input, which is
                    // also its shortcut) is moved out at its last mention.
                    let last = self.last_use[slot] == index && !inputs[at + 1..].contains(&slot);
                    let value = if last {
                        slots[slot].take()
                    } else {
                        slots[slot].clone()
                    };
                    value.expect("graph builder orders steps so every input is computed first")
                })
                .collect();
            slots[step.output()] = Some(run(step, args)?);
        }
        slots[self.output_slot]
            .take()
            .ok_or_else(|| GraphError::Shape("the output was never computed".into()))
    }
}
