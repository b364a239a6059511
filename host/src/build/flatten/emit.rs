//! Write the new component: the original's sections in order, with core
//! indices renumbered, the merged module in place of the merged ones, and
//! the items that need the merged instance moved after it.

use std::collections::HashMap;

use wasm_encoder::reencode::{Error as ReencodeError, Reencode, ReencodeComponent};
use wasm_encoder::{
    Alias, CanonicalFunctionSection, ComponentAliasSection, ComponentSectionId, ExportKind,
    InstanceSection, ModuleArg, RawSection,
};
use wasmparser::{CanonicalFunction, CanonicalOption, ComponentAlias, Instance};

use super::FlattenError;
use super::analysis::Analysis;
use super::graph::{Graph, Step};
use super::merge::Sort;

/// Old → new core indices while the new component is written.
#[derive(Default)]
pub(super) struct Indices {
    pub(super) items: [HashMap<u32, u32>; 4],
    pub(super) next: [u32; 4],
    pub(super) instances: HashMap<u32, u32>,
    pub(super) next_instance: u32,
    pub(super) modules: HashMap<u32, u32>,
    pub(super) next_module: u32,
}

impl Indices {
    pub(super) fn define(&mut self, sort: Sort, old: Option<u32>) -> u32 {
        let new = self.next[sort.slot()];
        self.next[sort.slot()] += 1;
        if let Some(old) = old {
            self.items[sort.slot()].insert(old, new);
        }
        new
    }

    pub(super) fn item(&self, sort: Sort, old: u32) -> Option<u32> {
        self.items[sort.slot()].get(&old).copied()
    }

    pub(super) fn instance(&self, old: u32) -> Option<u32> {
        self.instances.get(&old).copied()
    }

    pub(super) fn new_instance(&mut self, old: Option<u32>) -> u32 {
        let new = self.next_instance;
        self.next_instance += 1;
        if let Some(old) = old {
            self.instances.insert(old, new);
        }
        new
    }
}

/// The reencoder's view of `Indices`: every core reference it meets must
/// already have its new index (the emitter checks that first).
pub(super) struct Remapper<'i>(&'i Indices);

impl Remapper<'_> {
    pub(super) fn get(&self, sort: Sort, old: u32) -> Result<u32, ReencodeError<String>> {
        self.0
            .item(sort, old)
            .ok_or_else(|| ReencodeError::UserError(format!("core {sort:?} {old} is unmapped")))
    }
}

impl Reencode for Remapper<'_> {
    type Error = String;
    fn function_index(&mut self, func: u32) -> Result<u32, ReencodeError<String>> {
        self.get(Sort::Func, func)
    }
    fn memory_index(&mut self, memory: u32) -> Result<u32, ReencodeError<String>> {
        self.get(Sort::Memory, memory)
    }
    fn table_index(&mut self, table: u32) -> Result<u32, ReencodeError<String>> {
        self.get(Sort::Table, table)
    }
    fn global_index(&mut self, global: u32) -> Result<u32, ReencodeError<String>> {
        self.get(Sort::Global, global)
    }
}

impl ReencodeComponent for Remapper<'_> {}

pub(super) fn encode_err(error: ReencodeError<String>) -> FlattenError {
    FlattenError::Encode(format!("{error:?}"))
}

/// The component being written. Entries go out one at a time; consecutive
/// entries of one kind share a section.
pub(super) struct Writer {
    pub(super) out: wasm_encoder::Component,
    pub(super) open: Open,
}

pub(super) enum Open {
    None,
    Aliases(ComponentAliasSection),
    Canons(CanonicalFunctionSection),
    Instances(InstanceSection),
}

impl Writer {
    pub(super) fn flush(&mut self) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => None,
            Open::Aliases(s) => Some(self.out.section(&s)),
            Open::Canons(s) => Some(self.out.section(&s)),
            Open::Instances(s) => Some(self.out.section(&s)),
        };
    }

    pub(super) fn raw(&mut self, id: u8, data: &[u8]) {
        self.flush();
        self.out.section(&RawSection { id, data });
    }

    pub(super) fn aliases(&mut self) -> &mut ComponentAliasSection {
        if !matches!(self.open, Open::Aliases(_)) {
            self.flush();
            self.open = Open::Aliases(ComponentAliasSection::new());
        }
        let Open::Aliases(s) = &mut self.open else {
            unreachable!()
        };
        s
    }

    pub(super) fn canons(&mut self) -> &mut CanonicalFunctionSection {
        if !matches!(self.open, Open::Canons(_)) {
            self.flush();
            self.open = Open::Canons(CanonicalFunctionSection::new());
        }
        let Open::Canons(s) = &mut self.open else {
            unreachable!()
        };
        s
    }

    pub(super) fn instances(&mut self) -> &mut InstanceSection {
        if !matches!(self.open, Open::Instances(_)) {
            self.flush();
            self.open = Open::Instances(InstanceSection::new());
        }
        let Open::Instances(s) = &mut self.open else {
            unreachable!()
        };
        s
    }
}

pub(super) struct Emitter<'g, 'a> {
    pub(super) bytes: &'a [u8],
    pub(super) graph: &'g Graph<'a>,
    pub(super) analysis: &'g Analysis<'a>,
    pub(super) merged_bytes: Vec<u8>,
    pub(super) writer: Writer,
    pub(super) new: Indices,
    /// The merged instance's new index, once written.
    pub(super) merged: Option<u32>,
}

impl<'g, 'a> Emitter<'g, 'a> {
    pub(super) fn new(
        bytes: &'a [u8],
        graph: &'g Graph<'a>,
        analysis: &'g Analysis<'a>,
        merged_bytes: Vec<u8>,
    ) -> Self {
        Emitter {
            bytes,
            graph,
            analysis,
            merged_bytes,
            writer: Writer {
                out: wasm_encoder::Component::new(),
                open: Open::None,
            },
            new: Indices::default(),
            merged: None,
        }
    }

    /// Does every core item `step` refers to already have a new index?
    pub(super) fn ready(&self, step: &Step<'_>) -> bool {
        let new = &self.new;
        match step {
            Step::Raw(..) | Step::Module(_) => true,
            Step::Instance(i) if self.analysis.merged_instance.contains_key(i) => {
                self.merged.is_some()
            }
            Step::Instance(i) => match &self.graph.instances[*i as usize] {
                Instance::Instantiate { args, .. } => {
                    args.iter().all(|a| new.instance(a.index).is_some())
                }
                Instance::FromExports(exports) => exports
                    .iter()
                    .all(|e| Sort::of_kind(e.kind).is_ok_and(|s| new.item(s, e.index).is_some())),
            },
            Step::Alias(ComponentAlias::CoreInstanceExport { instance_index, .. }, _) => {
                self.analysis.merged_instance.contains_key(instance_index) && self.merged.is_some()
                    || new.instance(*instance_index).is_some()
            }
            Step::Alias(..) => true,
            Step::Canon(canon, _) => {
                let options: &[CanonicalOption] = match canon {
                    CanonicalFunction::Lift {
                        core_func_index,
                        options,
                        ..
                    } => {
                        if new.item(Sort::Func, *core_func_index).is_none() {
                            return false;
                        }
                        options
                    }
                    CanonicalFunction::Lower { options, .. } => options,
                    _ => &[],
                };
                options.iter().all(|o| match o {
                    CanonicalOption::Memory(m) => new.item(Sort::Memory, *m).is_some(),
                    CanonicalOption::Realloc(f)
                    | CanonicalOption::PostReturn(f)
                    | CanonicalOption::Callback(f) => new.item(Sort::Func, *f).is_some(),
                    _ => true,
                })
            }
        }
    }

    pub(super) fn externals_ready(&self) -> bool {
        self.analysis
            .external_items
            .iter()
            .all(|&(sort, index)| self.new.item(sort, index).is_some())
    }

    pub(super) fn emit(&mut self, step: &Step<'_>) -> Result<(), FlattenError> {
        match step {
            Step::Raw(id, range) => self.writer.raw(*id, &self.bytes[range.clone()]),
            Step::Module(old) => {
                if !self.analysis.merged_module.contains_key(old) {
                    let data = self.graph.modules[*old as usize];
                    self.writer.raw(ComponentSectionId::CoreModule.into(), data);
                    self.new.modules.insert(*old, self.new.next_module);
                    self.new.next_module += 1;
                }
            }
            Step::Instance(old) => {
                if let Some(merged) = self
                    .merged
                    .filter(|_| self.analysis.merged_instance.contains_key(old))
                {
                    self.new.instances.insert(*old, merged);
                    return Ok(());
                }
                let new = &self.new;
                let unmapped = || FlattenError::unsupported("an instance used before it exists");
                match &self.graph.instances[*old as usize] {
                    Instance::Instantiate { module_index, args } => {
                        let module = new
                            .modules
                            .get(module_index)
                            .copied()
                            .ok_or_else(unmapped)?;
                        let args = args
                            .iter()
                            .map(|a| {
                                Ok((
                                    a.name,
                                    ModuleArg::Instance(
                                        new.instance(a.index).ok_or_else(unmapped)?,
                                    ),
                                ))
                            })
                            .collect::<Result<Vec<_>, FlattenError>>()?;
                        self.writer.instances().instantiate(module, args);
                    }
                    Instance::FromExports(exports) => {
                        let items = exports
                            .iter()
                            .map(|e| {
                                let sort = Sort::of_kind(e.kind)?;
                                let index = new.item(sort, e.index).ok_or_else(unmapped)?;
                                Ok((e.name, sort.export_kind(), index))
                            })
                            .collect::<Result<Vec<_>, FlattenError>>()?;
                        self.writer.instances().export_items(items);
                    }
                }
                self.new.new_instance(Some(*old));
            }
            Step::Alias(alias, defines) => match alias.clone() {
                ComponentAlias::CoreInstanceExport {
                    instance_index,
                    name,
                    ..
                } => {
                    let (sort, old) = defines.expect("core aliases define a core item");
                    let instance = self.new.instance(instance_index).ok_or_else(|| {
                        FlattenError::unsupported("an alias of an instance not yet written")
                    })?;
                    let renamed = self
                        .analysis
                        .export_names
                        .get(&(instance_index, name.to_string()));
                    let name = renamed.map_or(name, String::as_str);
                    self.writer.aliases().alias(Alias::CoreInstanceExport {
                        instance,
                        kind: sort.export_kind(),
                        name,
                    });
                    self.new.define(sort, Some(old));
                }
                other => {
                    let encoded = Remapper(&self.new)
                        .component_alias(other)
                        .map_err(encode_err)?;
                    self.writer.aliases().alias(encoded);
                }
            },
            Step::Canon(canon, defines) => {
                let mut remap = Remapper(&self.new);
                remap
                    .parse_component_canonical(self.writer.canons(), canon.clone())
                    .map_err(encode_err)?;
                if let Some(old) = defines {
                    self.new.define(Sort::Func, Some(*old));
                }
            }
        }
        Ok(())
    }

    /// Write the merged module and its instance, fed by the externals.
    pub(super) fn emit_merged(&mut self) {
        self.writer
            .raw(ComponentSectionId::CoreModule.into(), &self.merged_bytes);
        let module = self.new.next_module;
        self.new.next_module += 1;
        let exports: Vec<(String, ExportKind, u32)> = self
            .analysis
            .external_items
            .iter()
            .enumerate()
            .map(|(n, &(sort, old))| {
                let new = self.new.item(sort, old).expect("externals are ready");
                (n.to_string(), sort.export_kind(), new)
            })
            .collect();
        let args = self.new.new_instance(None);
        let merged = self.new.new_instance(None);
        let instances = self.writer.instances();
        instances.export_items(exports.iter().map(|(n, k, i)| (n.as_str(), *k, *i)));
        instances.instantiate(module, [("", ModuleArg::Instance(args))]);
        self.merged = Some(merged);
    }
}
