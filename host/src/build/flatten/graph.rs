//! Read the component into the steps to rewrite and the graph of its core
//! items: which module each instance instantiates, where each core
//! function, table, memory and global comes from.

use std::ops::Range;

use wasm_encoder::ComponentSectionId;
use wasmparser::{
    CanonicalFunction, Chunk, ComponentAlias, ComponentExternalKind, ComponentInstance,
    ComponentOuterAliasKind, Encoding, Instance, InstantiationArg, Parser, Payload,
};

use super::FlattenError;
use super::merge::Sort;

/// One top-level entry of the component, in order.
pub(super) enum Step<'a> {
    /// A section with no core indices in it, copied as is.
    Raw(u8, Range<usize>),
    Module(u32),
    Instance(u32),
    /// An alias, and the old core item it defines (if it is a core alias).
    Alias(ComponentAlias<'a>, Option<(Sort, u32)>),
    /// A canonical function, and the old core function it defines (all but
    /// `lift`, which defines a component function).
    Canon(CanonicalFunction, Option<u32>),
}

/// Where an old core item came from.
#[derive(Clone, Copy)]
pub(super) enum Origin<'a> {
    Alias {
        instance: u32,
        name: &'a str,
    },
    /// Defined by a canonical function; `true` when it refers to core items
    /// (a lowering with a memory or `realloc`).
    Canon(bool),
}

pub(super) struct Graph<'a> {
    pub(super) steps: Vec<Step<'a>>,
    pub(super) modules: Vec<&'a [u8]>,
    pub(super) instances: Vec<Instance<'a>>,
    /// Old core index spaces, per sort.
    pub(super) items: [Vec<Origin<'a>>; 4],
}

impl<'a> Graph<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Self, FlattenError> {
        let mut graph = Graph {
            steps: Vec::new(),
            modules: Vec::new(),
            instances: Vec::new(),
            items: Default::default(),
        };
        let mut parser = Parser::new(0);
        let mut offset = 0;
        loop {
            let (payload, consumed) = match parser.parse(&bytes[offset..], true)? {
                Chunk::Parsed { consumed, payload } => (payload, consumed),
                Chunk::NeedMoreData(_) => {
                    return Err(FlattenError::unsupported("a truncated component"));
                }
            };
            offset += consumed;
            match payload {
                Payload::Version { encoding, .. } => {
                    if encoding != Encoding::Component {
                        return Err(FlattenError::unsupported("a core module, not a component"));
                    }
                }
                Payload::ModuleSection {
                    unchecked_range, ..
                } => {
                    let module = bytes
                        .get(unchecked_range.clone())
                        .ok_or_else(|| FlattenError::unsupported("a truncated module"))?;
                    graph.steps.push(Step::Module(graph.modules.len() as u32));
                    graph.modules.push(module);
                    // The parent parser resumes after the nested module.
                    offset += unchecked_range.len();
                }
                Payload::InstanceSection(reader) => {
                    for instance in reader {
                        let index = graph.instances.len() as u32;
                        graph.steps.push(Step::Instance(index));
                        graph.instances.push(instance?);
                    }
                }
                Payload::ComponentAliasSection(reader) => {
                    for alias in reader {
                        let alias = alias?;
                        let defines = match alias {
                            ComponentAlias::CoreInstanceExport {
                                kind,
                                instance_index,
                                name,
                            } => {
                                let sort = Sort::of_kind(kind)?;
                                let space = &mut graph.items[sort.slot()];
                                space.push(Origin::Alias {
                                    instance: instance_index,
                                    name,
                                });
                                Some((sort, space.len() as u32 - 1))
                            }
                            ComponentAlias::Outer {
                                kind: ComponentOuterAliasKind::CoreModule,
                                ..
                            } => return Err(FlattenError::unsupported("an outer module alias")),
                            _ => None,
                        };
                        graph.steps.push(Step::Alias(alias, defines));
                    }
                }
                Payload::ComponentCanonicalSection(reader) => {
                    for canon in reader {
                        let canon = canon?;
                        let core_refs = match &canon {
                            CanonicalFunction::Lift { .. } => None,
                            CanonicalFunction::Lower { options, .. } => Some(!options.is_empty()),
                            CanonicalFunction::ResourceNew { .. }
                            | CanonicalFunction::ResourceDrop { .. }
                            | CanonicalFunction::ResourceRep { .. } => Some(false),
                            other => {
                                return Err(FlattenError::unsupported(format!(
                                    "canonical function {other:?}"
                                )));
                            }
                        };
                        let defines = core_refs.map(|refs| {
                            let space = &mut graph.items[Sort::Func.slot()];
                            space.push(Origin::Canon(refs));
                            space.len() as u32 - 1
                        });
                        graph.steps.push(Step::Canon(canon, defines));
                    }
                }
                Payload::ComponentInstanceSection(ref reader) => {
                    for instance in reader.clone() {
                        if let ComponentInstance::Instantiate { args, .. } = instance?
                            && args.iter().any(|a| a.kind == ComponentExternalKind::Module)
                        {
                            return Err(FlattenError::unsupported(
                                "a module passed to a component",
                            ));
                        }
                    }
                    graph.raw(&payload);
                }
                Payload::ComponentExportSection(ref reader) => {
                    for export in reader.clone() {
                        if export?.kind == ComponentExternalKind::Module {
                            return Err(FlattenError::unsupported("an exported module"));
                        }
                    }
                    graph.raw(&payload);
                }
                Payload::ComponentSection {
                    unchecked_range, ..
                } => {
                    // wit-component wraps exported interfaces in small
                    // components that only re-export typed functions; they
                    // hold no core items and are copied as they are.
                    let nested = bytes
                        .get(unchecked_range.clone())
                        .ok_or_else(|| FlattenError::unsupported("a truncated component"))?;
                    for payload in Parser::new(0).parse_all(nested) {
                        match payload? {
                            Payload::ModuleSection { .. }
                            | Payload::InstanceSection(_)
                            | Payload::ComponentCanonicalSection(_)
                            | Payload::ComponentSection { .. } => {
                                return Err(FlattenError::unsupported(
                                    "a nested component with core items",
                                ));
                            }
                            Payload::ComponentAliasSection(aliases) => {
                                for alias in aliases {
                                    if let ComponentAlias::Outer {
                                        kind: ComponentOuterAliasKind::CoreModule,
                                        ..
                                    } = alias?
                                    {
                                        return Err(FlattenError::unsupported(
                                            "a nested component aliasing a module",
                                        ));
                                    }
                                }
                            }
                            _ => (),
                        }
                    }
                    graph.steps.push(Step::Raw(
                        ComponentSectionId::Component.into(),
                        unchecked_range.clone(),
                    ));
                    offset += unchecked_range.len();
                }
                Payload::CustomSection(ref section) if section.name() == "component-name" => {
                    // Its core indices would be stale; the names are cosmetic.
                }
                Payload::End(_) => break,
                ref other => graph.raw(other),
            }
        }
        Ok(graph)
    }

    pub(super) fn raw(&mut self, payload: &Payload<'_>) {
        if let Some((id, range)) = payload.as_section() {
            self.steps.push(Step::Raw(id, range));
        }
    }

    pub(super) fn instantiation(&self, instance: u32) -> Option<&[InstantiationArg<'a>]> {
        match self.instances.get(instance as usize)? {
            Instance::Instantiate { args, .. } => Some(args),
            Instance::FromExports(_) => None,
        }
    }

    /// Does core instance `instance` (transitively) need a function lowered
    /// with options, or an instance in `outside`?
    pub(super) fn needs_lowering(&self, outside: &[bool], instance: u32) -> bool {
        match self.instances.get(instance as usize) {
            Some(Instance::Instantiate { .. }) => outside[instance as usize],
            Some(Instance::FromExports(exports)) => exports.iter().any(|e| {
                let Ok(sort) = Sort::of_kind(e.kind) else {
                    return true;
                };
                match self.items[sort.slot()].get(e.index as usize).copied() {
                    Some(Origin::Canon(core_refs)) => core_refs,
                    Some(Origin::Alias { instance, .. }) => self.needs_lowering(outside, instance),
                    None => true,
                }
            }),
            None => true,
        }
    }
}
