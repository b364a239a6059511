//! Flatten the pre-initialised component: one core module instead of ~14.
//!
//! componentize-py links CPython as a dynamic library set: `libc.so`,
//! `libpython3.14.so` and friends each become a core module that imports
//! the shared memory, the shared function table and the `__table_base`
//! globals from the linker's `main` module. Each library then fills its
//! slice of the table with element segments at `global.get __table_base`.
//! wasmtime can only precompute (and lazily initialise) tables that a module
//! defines itself with constant offsets, so every instantiation resolved all
//! ~5,700 table entries and wired ~14 instances' imports: most of a fresh
//! instance's cost.
//!
//! This pass merges every core module that can be merged into one (see
//! `merge`), so the table is defined where its segments are, at constant
//! offsets. What stays outside are the instances that need the merged
//! memory to exist first: wit-component's `fixup` module, which fills the
//! indirect-call table of its `shim` (merged like the rest) with imports
//! lowered with that memory. The component's
//! own interface (imports, exports, types) is untouched; only core-level
//! items are re-indexed, and those that depend on the merged instance are
//! moved after it.
//!
//! It is an optimisation: a component of a shape this pass does not know is
//! reported as `FlattenError::Unsupported` and the caller keeps the original.

mod merge;

use std::collections::HashMap;
use std::ops::Range;

use wasm_encoder::reencode::{Error as ReencodeError, Reencode, ReencodeComponent};
use wasm_encoder::{
    Alias, CanonicalFunctionSection, ComponentAliasSection, ComponentSectionId, ExportKind,
    InstanceSection, ModuleArg, RawSection,
};
use wasmparser::{
    CanonicalFunction, CanonicalOption, Chunk, ComponentAlias, ComponentExternalKind,
    ComponentInstance, ComponentOuterAliasKind, Encoding, Instance, InstantiationArg, Parser,
    Payload,
};

use merge::{External, ModuleInfo, Plan, Sort, Target};

/// Why a component was not flattened.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("the component has a shape flattening does not handle: {0}")]
    Unsupported(String),
    #[error("the component does not parse: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    #[error("re-encoding failed: {0}")]
    Encode(String),
}

impl FlattenError {
    fn unsupported(what: impl Into<String>) -> Self {
        FlattenError::Unsupported(what.into())
    }
}

/// The result: the new component and how many core modules went into one.
pub struct Flattened {
    pub bytes: Vec<u8>,
    pub merged_modules: usize,
}

/// One top-level entry of the component, in order.
enum Step<'a> {
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
enum Origin<'a> {
    Alias {
        instance: u32,
        name: &'a str,
    },
    /// Defined by a canonical function; `true` when it refers to core items
    /// (a lowering with a memory or `realloc`).
    Canon(bool),
}

struct Graph<'a> {
    steps: Vec<Step<'a>>,
    modules: Vec<&'a [u8]>,
    instances: Vec<Instance<'a>>,
    /// Old core index spaces, per sort.
    items: [Vec<Origin<'a>>; 4],
}

impl<'a> Graph<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, FlattenError> {
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

    fn raw(&mut self, payload: &Payload<'_>) {
        if let Some((id, range)) = payload.as_section() {
            self.steps.push(Step::Raw(id, range));
        }
    }

    fn instantiation(&self, instance: u32) -> Option<&[InstantiationArg<'a>]> {
        match self.instances.get(instance as usize)? {
            Instance::Instantiate { args, .. } => Some(args),
            Instance::FromExports(_) => None,
        }
    }

    /// Does core instance `instance` (transitively) need a function lowered
    /// with options, or an instance in `outside`?
    fn needs_lowering(&self, outside: &[bool], instance: u32) -> bool {
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

/// The instances that go into the merged module.
struct MergeSet<'a> {
    /// Old module index → position in the merge.
    module: HashMap<u32, usize>,
    /// Old instance index → position in the merge.
    instance: HashMap<u32, usize>,
    /// Position → old instance index.
    instances: Vec<u32>,
    modules: Vec<ModuleInfo<'a>>,
}

impl<'a> MergeSet<'a> {
    /// Every instantiation, except those that need something lowered with
    /// the merged memory (wit-component's fixup) or need such an instance.
    fn new(graph: &Graph<'a>) -> Result<Self, FlattenError> {
        let mut outside = vec![false; graph.instances.len()];
        let mut set = MergeSet {
            module: HashMap::new(),
            instance: HashMap::new(),
            instances: Vec::new(),
            modules: Vec::new(),
        };
        for (i, instance) in graph.instances.iter().enumerate() {
            let Instance::Instantiate { module_index, args } = instance else {
                continue;
            };
            if args
                .iter()
                .any(|arg| graph.needs_lowering(&outside, arg.index))
            {
                outside[i] = true;
                continue;
            }
            if set.module.contains_key(module_index) {
                return Err(FlattenError::unsupported("a module instantiated twice"));
            }
            let bytes = graph
                .modules
                .get(*module_index as usize)
                .ok_or_else(|| FlattenError::unsupported("an unknown module index"))?;
            set.module.insert(*module_index, set.modules.len());
            set.instance.insert(i as u32, set.modules.len());
            set.instances.push(i as u32);
            set.modules.push(ModuleInfo::parse(bytes)?);
        }
        if set.modules.len() < 2 {
            return Err(FlattenError::unsupported("fewer than two modules to merge"));
        }
        Ok(set)
    }
}

/// What an import or export resolves to before externals are numbered.
enum Resolved {
    Target(Target),
    /// An old core item defined outside the merged instances.
    Item(Sort, u32),
}

/// Follows imports and aliases through the instance graph.
struct Resolver<'g, 'a> {
    graph: &'g Graph<'a>,
    set: &'g MergeSet<'a>,
    externals: HashMap<(Sort, u32), usize>,
    external_list: Vec<(External, (Sort, u32))>,
}

impl Resolver<'_, '_> {
    /// Valid components have no cycles; this only bounds malformed input.
    const MAX_DEPTH: u32 = 64;

    /// Follow export `name` of old core instance `instance` to its
    /// definition.
    fn export(
        &self,
        instance: u32,
        name: &str,
        sort: Sort,
        depth: u32,
    ) -> Result<Resolved, FlattenError> {
        if depth > Self::MAX_DEPTH {
            return Err(FlattenError::unsupported("an alias chain too deep"));
        }
        let missing = || FlattenError::unsupported(format!("instance {instance} lacks {name}"));
        if let Some(&m) = self.set.instance.get(&instance) {
            let (found, index) = self.set.modules[m].export(name).ok_or_else(missing)?;
            if found != sort {
                return Err(missing());
            }
            return self.local(m, sort, index, depth);
        }
        match self.graph.instances.get(instance as usize) {
            Some(Instance::FromExports(exports)) => {
                let export = exports
                    .iter()
                    .find(|e| e.name == name)
                    .ok_or_else(missing)?;
                self.item(sort, export.index, depth)
            }
            _ => Err(FlattenError::unsupported(format!(
                "a merged module imports from unmerged instance {instance}"
            ))),
        }
    }

    fn item(&self, sort: Sort, index: u32, depth: u32) -> Result<Resolved, FlattenError> {
        match self.graph.items[sort.slot()].get(index as usize).copied() {
            Some(Origin::Alias { instance, name }) => {
                let follow = self.set.instance.contains_key(&instance)
                    || matches!(
                        self.graph.instances.get(instance as usize),
                        Some(Instance::FromExports(_))
                    );
                if follow {
                    self.export(instance, name, sort, depth + 1)
                } else {
                    Ok(Resolved::Item(sort, index))
                }
            }
            Some(Origin::Canon(_)) => Ok(Resolved::Item(sort, index)),
            None => Err(FlattenError::unsupported(format!(
                "unknown core item {index}"
            ))),
        }
    }

    /// A module-local index: a definition, or an import to follow further.
    fn local(
        &self,
        m: usize,
        sort: Sort,
        index: u32,
        depth: u32,
    ) -> Result<Resolved, FlattenError> {
        let module = &self.set.modules[m];
        let Some(position) = module.import_at(sort, index) else {
            return Ok(Resolved::Target(Target::Defined {
                module: m,
                sort,
                index: module.defined_index(sort, index),
            }));
        };
        let import = &module.imports[position];
        let args = self
            .graph
            .instantiation(self.set.instances[m])
            .expect("merged instances are instantiations");
        let arg = args
            .iter()
            .find(|a| a.name == import.module)
            .ok_or_else(|| FlattenError::unsupported(format!("no argument {}", import.module)))?;
        self.export(arg.index, import.name, sort, depth + 1)
    }

    /// Number an external the first time it is seen; `importer` (module,
    /// import position) gives its type.
    fn external(
        &mut self,
        sort: Sort,
        index: u32,
        importer: Option<(usize, usize)>,
    ) -> Result<Target, FlattenError> {
        if let Some(&n) = self.externals.get(&(sort, index)) {
            return Ok(Target::External(n));
        }
        let (module, import) = importer.ok_or_else(|| {
            FlattenError::unsupported("an exported item that no merged module imports")
        })?;
        let n = self.external_list.len();
        self.externals.insert((sort, index), n);
        self.external_list.push((
            External {
                sort,
                module,
                import,
            },
            (sort, index),
        ));
        Ok(Target::External(n))
    }
}

/// The merge plan plus what the component rewrite needs to know about it.
struct Analysis<'a> {
    merged_module: HashMap<u32, usize>,
    merged_instance: HashMap<u32, usize>,
    plan: Plan<'a>,
    /// Old (sort, index) of each external, in `plan.externals` order.
    external_items: Vec<(Sort, u32)>,
    /// The merged module's export name for each aliased (instance, name).
    export_names: HashMap<(u32, String), String>,
}

impl<'a> Analysis<'a> {
    fn new(graph: &Graph<'a>) -> Result<Self, FlattenError> {
        let set = MergeSet::new(graph)?;
        let mut resolver = Resolver {
            graph,
            set: &set,
            externals: HashMap::new(),
            external_list: Vec::new(),
        };
        let mut imports = Vec::new();
        for (m, module) in set.modules.iter().enumerate() {
            let args = graph
                .instantiation(set.instances[m])
                .expect("merged instances are instantiations");
            let mut targets = Vec::new();
            for (position, import) in module.imports.iter().enumerate() {
                let arg = args
                    .iter()
                    .find(|a| a.name == import.module)
                    .ok_or_else(|| {
                        FlattenError::unsupported(format!("no argument for {}", import.module))
                    })?;
                let sort = Sort::of_type(&import.ty)?;
                let target = match resolver.export(arg.index, import.name, sort, 0)? {
                    Resolved::Target(target) => target,
                    Resolved::Item(sort, index) => {
                        resolver.external(sort, index, Some((m, position)))?
                    }
                };
                targets.push(target);
            }
            imports.push(targets);
        }

        // Every core alias of a merged instance becomes an export of the
        // merged module (harmless when it turns out to be unused).
        let mut exports = Vec::new();
        let mut export_names = HashMap::new();
        for step in &graph.steps {
            let Step::Alias(
                ComponentAlias::CoreInstanceExport {
                    kind,
                    instance_index,
                    name,
                },
                _,
            ) = step
            else {
                continue;
            };
            let key = (*instance_index, (*name).to_string());
            if !set.instance.contains_key(instance_index) || export_names.contains_key(&key) {
                continue;
            }
            let sort = Sort::of_kind(*kind)?;
            let target = match resolver.export(*instance_index, name, sort, 0)? {
                Resolved::Target(target) => target,
                Resolved::Item(sort, index) => resolver.external(sort, index, None)?,
            };
            let export = format!("{instance_index}:{name}");
            exports.push((export.clone(), sort, target));
            export_names.insert(key, export);
        }
        let (externals, external_items) = resolver.external_list.into_iter().unzip();
        Ok(Analysis {
            merged_module: set.module,
            merged_instance: set.instance,
            plan: Plan {
                modules: set.modules,
                imports,
                externals,
                exports,
            },
            external_items,
            export_names,
        })
    }
}

/// Old → new core indices while the new component is written.
#[derive(Default)]
struct Indices {
    items: [HashMap<u32, u32>; 4],
    next: [u32; 4],
    instances: HashMap<u32, u32>,
    next_instance: u32,
    modules: HashMap<u32, u32>,
    next_module: u32,
}

impl Indices {
    fn define(&mut self, sort: Sort, old: Option<u32>) -> u32 {
        let new = self.next[sort.slot()];
        self.next[sort.slot()] += 1;
        if let Some(old) = old {
            self.items[sort.slot()].insert(old, new);
        }
        new
    }

    fn item(&self, sort: Sort, old: u32) -> Option<u32> {
        self.items[sort.slot()].get(&old).copied()
    }

    fn instance(&self, old: u32) -> Option<u32> {
        self.instances.get(&old).copied()
    }

    fn new_instance(&mut self, old: Option<u32>) -> u32 {
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
struct Remapper<'i>(&'i Indices);

impl Remapper<'_> {
    fn get(&self, sort: Sort, old: u32) -> Result<u32, ReencodeError<String>> {
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

fn encode_err(error: ReencodeError<String>) -> FlattenError {
    FlattenError::Encode(format!("{error:?}"))
}

/// The component being written. Entries go out one at a time; consecutive
/// entries of one kind share a section.
struct Writer {
    out: wasm_encoder::Component,
    open: Open,
}

enum Open {
    None,
    Aliases(ComponentAliasSection),
    Canons(CanonicalFunctionSection),
    Instances(InstanceSection),
}

impl Writer {
    fn flush(&mut self) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => None,
            Open::Aliases(s) => Some(self.out.section(&s)),
            Open::Canons(s) => Some(self.out.section(&s)),
            Open::Instances(s) => Some(self.out.section(&s)),
        };
    }

    fn raw(&mut self, id: u8, data: &[u8]) {
        self.flush();
        self.out.section(&RawSection { id, data });
    }

    fn aliases(&mut self) -> &mut ComponentAliasSection {
        if !matches!(self.open, Open::Aliases(_)) {
            self.flush();
            self.open = Open::Aliases(ComponentAliasSection::new());
        }
        let Open::Aliases(s) = &mut self.open else {
            unreachable!()
        };
        s
    }

    fn canons(&mut self) -> &mut CanonicalFunctionSection {
        if !matches!(self.open, Open::Canons(_)) {
            self.flush();
            self.open = Open::Canons(CanonicalFunctionSection::new());
        }
        let Open::Canons(s) = &mut self.open else {
            unreachable!()
        };
        s
    }

    fn instances(&mut self) -> &mut InstanceSection {
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

struct Emitter<'g, 'a> {
    bytes: &'a [u8],
    graph: &'g Graph<'a>,
    analysis: &'g Analysis<'a>,
    merged_bytes: Vec<u8>,
    writer: Writer,
    new: Indices,
    /// The merged instance's new index, once written.
    merged: Option<u32>,
}

impl Emitter<'_, '_> {
    /// Does every core item `step` refers to already have a new index?
    fn ready(&self, step: &Step<'_>) -> bool {
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

    fn externals_ready(&self) -> bool {
        self.analysis
            .external_items
            .iter()
            .all(|&(sort, index)| self.new.item(sort, index).is_some())
    }

    fn emit(&mut self, step: &Step<'_>) -> Result<(), FlattenError> {
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
    fn emit_merged(&mut self) {
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

/// Merge the component's core modules (see the module docs).
pub fn flatten(bytes: &[u8]) -> Result<Flattened, FlattenError> {
    let graph = Graph::parse(bytes)?;
    let analysis = Analysis::new(&graph)?;
    let merged_bytes = merge::merge(&analysis.plan)?;
    let mut emitter = Emitter {
        bytes,
        graph: &graph,
        analysis: &analysis,
        merged_bytes,
        writer: Writer {
            out: wasm_encoder::Component::new(),
            open: Open::None,
        },
        new: Indices::default(),
        merged: None,
    };
    // Items that need the merged instance wait until it is written, which
    // is as soon as everything it imports exists.
    let mut deferred = Vec::new();
    if emitter.externals_ready() {
        emitter.emit_merged();
    }
    for step in &graph.steps {
        if !emitter.ready(step) {
            if emitter.merged.is_some() {
                return Err(FlattenError::unsupported(
                    "an item used before it is defined",
                ));
            }
            if let Step::Canon(CanonicalFunction::Lift { .. }, _) = step {
                // Moving a component-level definition would renumber the
                // component's own index space.
                return Err(FlattenError::unsupported("a lift before the merge point"));
            }
            deferred.push(step);
            continue;
        }
        emitter.emit(step)?;
        if emitter.merged.is_none() && emitter.externals_ready() {
            emitter.emit_merged();
            for step in std::mem::take(&mut deferred) {
                if !emitter.ready(step) {
                    return Err(FlattenError::unsupported("a deferred item is not ready"));
                }
                emitter.emit(step)?;
            }
        }
    }
    if emitter.merged.is_none() {
        return Err(FlattenError::unsupported(
            "the merge point was never reached",
        ));
    }
    emitter.writer.flush();
    Ok(Flattened {
        bytes: emitter.writer.out.finish(),
        merged_modules: analysis.plan.modules.len(),
    })
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Store};

    use super::*;

    /// The dynamic-linking shape in miniature: `main` defines the memory,
    /// the table and the base globals; `lib` imports them and fills its
    /// slot of the table at `global.get __table_base`. `late` needs a
    /// function lowered with `main`'s memory, so it must stay outside, and
    /// the aliases of `main` come before the last lowering `lib` imports,
    /// so they have to be moved after the merged instance.
    const LINKED: &str = r#"
    (component
      (import "double" (func $double (param "x" s32) (result s32)))
      (core module $main
        (memory (export "memory") 1)
        (table (export "table") 4 funcref)
        (global (export "lib:table_base") i32 (i32.const 2))
        (global (export "lib:memory_base") i32 (i32.const 100))
        (global (export "big") i64 (i64.const 5000000000))
        (func $one (result i32) i32.const 1)
        (elem (i32.const 0) $one))
      (core module $lib
        (import "env" "memory" (memory 1))
        (import "env" "table" (table 4 funcref))
        (import "env" "__table_base" (global $tb i32))
        (import "env" "__memory_base" (global $mb i32))
        (import "host" "double" (func $double (param i32) (result i32)))
        (import "env" "big" (global $big i64))
        (global $copy i64 (global.get $big))
        (func (export "big") (result i64) global.get $copy)
        (type $t (func (result i32)))
        (func $seven (result i32) i32.const 7)
        (elem (global.get $tb) $seven)
        (data (global.get $mb) "\2a")
        (func (export "run") (result i32)
          (call_indirect (type $t) (i32.const 0))
          (call_indirect (type $t) (i32.const 2))
          i32.add
          (i32.load8_u (i32.const 100))
          i32.add
          (call $double (i32.const 1))
          i32.add))
      (core module $late
        (import "host" "double" (func $double (param i32) (result i32)))
        (func (export "go") (result i32) (call $double (i32.const 50))))
      (core instance $main (instantiate $main))
      (alias core export $main "memory" (core memory $memory))
      (alias core export $main "table" (core table $table))
      (alias core export $main "lib:table_base" (core global $tb))
      (alias core export $main "lib:memory_base" (core global $mb))
      (alias core export $main "big" (core global $big))
      (core instance $env
        (export "memory" (memory $memory))
        (export "table" (table $table))
        (export "__table_base" (global $tb))
        (export "__memory_base" (global $mb))
        (export "big" (global $big)))
      (core func $double_plain (canon lower (func $double)))
      (core instance $host (export "double" (func $double_plain)))
      (core instance $lib (instantiate $lib
        (with "env" (instance $env))
        (with "host" (instance $host))))
      (core func $double_mem (canon lower (func $double) (memory $memory)))
      (core instance $late_host (export "double" (func $double_mem)))
      (core instance $late (instantiate $late (with "host" (instance $late_host))))
      (alias core export $lib "run" (core func $run))
      (alias core export $late "go" (core func $go))
      (alias core export $lib "big" (core func $big_fn))
      (func (export "big") (result s64) (canon lift (core func $big_fn)))
      (func (export "run") (result s32) (canon lift (core func $run)))
      (func (export "go") (result s32) (canon lift (core func $go))))
    "#;

    fn call<R: wasmtime::component::ComponentType + wasmtime::component::Lift + 'static>(
        engine: &Engine,
        bytes: &[u8],
        export: &str,
    ) -> R {
        let component = Component::new(engine, bytes).unwrap();
        let mut linker = Linker::new(engine);
        linker
            .root()
            .func_wrap("double", |_, (x,): (i32,)| Ok((x * 2,)))
            .unwrap();
        let mut store = Store::new(engine, ());
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let func = instance
            .get_typed_func::<(), (R,)>(&mut store, export)
            .unwrap();
        func.call(&mut store, ()).unwrap().0
    }

    /// Every core module in a component, as (imports, element and data
    /// offsets that are not constants).
    fn modules(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        let mut depth = 0;
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.unwrap() {
                Payload::ModuleSection { .. } => {
                    depth += 1;
                    found.push((0, 0));
                }
                Payload::End(_) if depth > 0 => depth -= 1,
                Payload::ImportSection(r) if depth > 0 => {
                    found.last_mut().unwrap().0 = r.into_imports().count();
                }
                Payload::ElementSection(r) if depth > 0 => {
                    for e in r {
                        if let wasmparser::ElementKind::Active { offset_expr, .. } = e.unwrap().kind
                            && !is_const(&offset_expr)
                        {
                            found.last_mut().unwrap().1 += 1;
                        }
                    }
                }
                Payload::DataSection(r) if depth > 0 => {
                    for d in r {
                        if let wasmparser::DataKind::Active { offset_expr, .. } = d.unwrap().kind
                            && !is_const(&offset_expr)
                        {
                            found.last_mut().unwrap().1 += 1;
                        }
                    }
                }
                _ => (),
            }
        }
        found
    }

    fn is_const(expr: &wasmparser::ConstExpr<'_>) -> bool {
        let ops: Vec<_> = expr
            .get_operators_reader()
            .into_iter()
            .map(|op| op.unwrap())
            .collect();
        matches!(
            ops.as_slice(),
            [
                wasmparser::Operator::I32Const { .. },
                wasmparser::Operator::End
            ]
        )
    }

    #[test]
    fn merges_the_linked_modules_and_keeps_behaviour() {
        let original = wat::parse_str(LINKED).unwrap();
        let flat = flatten(&original).unwrap();
        assert_eq!(flat.merged_modules, 2, "main and lib merge; late stays");

        // One module for main+lib (with constant segment offsets), one for late.
        let before = modules(&original);
        let after = modules(&flat.bytes);
        assert_eq!(before.len(), 3);
        assert_eq!(after.len(), 2);
        assert_eq!(
            after[0],
            (1, 0),
            "merged: imports only `double`, folds offsets"
        );
        assert_eq!(before[1].1, 2, "lib's segments read globals before");

        let engine = Engine::default();
        for bytes in [&original, &flat.bytes] {
            assert_eq!(call::<i32>(&engine, bytes, "run"), 1 + 7 + 42 + 2);
            assert_eq!(call::<i32>(&engine, bytes, "go"), 100);
            // An i64 global initialised from another module's stays an i64.
            assert_eq!(call::<i64>(&engine, bytes, "big"), 5_000_000_000);
        }
    }

    #[test]
    fn other_shapes_are_refused_not_mangled() {
        let core_module = wat::parse_str("(module)").unwrap();
        assert!(matches!(
            flatten(&core_module),
            Err(FlattenError::Unsupported(_))
        ));
        let one_module =
            wat::parse_str("(component (core module $m) (core instance (instantiate $m)))")
                .unwrap();
        assert!(matches!(
            flatten(&one_module),
            Err(FlattenError::Unsupported(_))
        ));
        let twice = wat::parse_str(
            "(component (core module $m) (core instance (instantiate $m)) (core instance (instantiate $m)))",
        )
        .unwrap();
        assert!(matches!(flatten(&twice), Err(FlattenError::Unsupported(_))));
        assert!(flatten(b"\0asm\x0d\0\x01\0\x07\xff").is_err());
    }
}
