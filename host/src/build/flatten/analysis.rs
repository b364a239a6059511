//! Decide which instances merge, follow every import of every merged module
//! to its definition, and collect what the merged module must import and
//! export: the plan `merge` builds from.

use std::collections::HashMap;

use wasmparser::{ComponentAlias, Instance};

use super::FlattenError;
use super::graph::{Graph, Origin, Step};
use super::merge::{External, ModuleInfo, Plan, Sort, Target};

/// The instances that go into the merged module.
pub(super) struct MergeSet<'a> {
    /// Old module index → position in the merge.
    pub(super) module: HashMap<u32, usize>,
    /// Old instance index → position in the merge.
    pub(super) instance: HashMap<u32, usize>,
    /// Position → old instance index.
    pub(super) instances: Vec<u32>,
    pub(super) modules: Vec<ModuleInfo<'a>>,
}

impl<'a> MergeSet<'a> {
    /// Every instantiation, except those that need something lowered with
    /// the merged memory (wit-component's fixup) or need such an instance.
    pub(super) fn new(graph: &Graph<'a>) -> Result<Self, FlattenError> {
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
pub(super) enum Resolved {
    Target(Target),
    /// An old core item defined outside the merged instances.
    Item(Sort, u32),
}

/// Follows imports and aliases through the instance graph.
pub(super) struct Resolver<'g, 'a> {
    pub(super) graph: &'g Graph<'a>,
    pub(super) set: &'g MergeSet<'a>,
    pub(super) externals: HashMap<(Sort, u32), usize>,
    pub(super) external_list: Vec<(External, (Sort, u32))>,
}

impl Resolver<'_, '_> {
    /// Valid components have no cycles; this only bounds malformed input.
    const MAX_DEPTH: u32 = 64;

    /// Follow export `name` of old core instance `instance` to its
    /// definition.
    pub(super) fn export(
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

    pub(super) fn item(
        &self,
        sort: Sort,
        index: u32,
        depth: u32,
    ) -> Result<Resolved, FlattenError> {
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
    pub(super) fn local(
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
        self.import(m, position, depth + 1)
    }

    /// Follow import number `position` of merged module `m` through the
    /// argument its instantiation gives for it.
    pub(super) fn import(
        &self,
        m: usize,
        position: usize,
        depth: u32,
    ) -> Result<Resolved, FlattenError> {
        let import = &self.set.modules[m].imports[position];
        let args = self
            .graph
            .instantiation(self.set.instances[m])
            .expect("merged instances are instantiations");
        let arg = args
            .iter()
            .find(|a| a.name == import.module)
            .ok_or_else(|| FlattenError::unsupported(format!("no argument {}", import.module)))?;
        self.export(arg.index, import.name, Sort::of_type(&import.ty)?, depth)
    }

    /// Number an external the first time it is seen; `importer` (module,
    /// import position) gives its type.
    pub(super) fn external(
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
pub(super) struct Analysis<'a> {
    pub(super) merged_module: HashMap<u32, usize>,
    pub(super) merged_instance: HashMap<u32, usize>,
    pub(super) plan: Plan<'a>,
    /// Old (sort, index) of each external, in `plan.externals` order.
    pub(super) external_items: Vec<(Sort, u32)>,
    /// The merged module's export name for each aliased (instance, name).
    pub(super) export_names: HashMap<(u32, String), String>,
}

impl<'a> Analysis<'a> {
    pub(super) fn new(graph: &Graph<'a>) -> Result<Self, FlattenError> {
        let set = MergeSet::new(graph)?;
        let mut resolver = Resolver {
            graph,
            set: &set,
            externals: HashMap::new(),
            external_list: Vec::new(),
        };
        let mut imports = Vec::new();
        for (m, module) in set.modules.iter().enumerate() {
            let mut targets = Vec::new();
            for position in 0..module.imports.len() {
                let target = match resolver.import(m, position, 0)? {
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
