//! Merge several core modules, each instantiated once, into one module.
//!
//! The caller (see `flatten`) has resolved every import of every module to
//! either an item another module defines or an item that stays outside
//! (an "external"). Here the index spaces are laid end to end: externals
//! first (they become the merged module's imports), then each module's own
//! definitions in order. Element and data offsets that read constant
//! globals (the dynamic linker's `__table_base`, `__memory_base`) are folded
//! to `i32.const`, so that wasmtime can build the function table at compile
//! time and initialise it lazily instead of on every instantiation.

use std::borrow::Cow;
use std::collections::HashMap;

use wasm_encoder::reencode::{Error as ReencodeError, Reencode};
use wasm_encoder::{
    CodeSection, ConstExpr, DataCountSection, DataSection, ElementSection, Elements, EntityType,
    ExportKind, ExportSection, FunctionSection, GlobalSection, ImportSection, MemorySection,
    NameMap, NameSection, TableSection, TypeSection,
};
use wasmparser::{
    DataKind, ElementItems, ElementKind, ExternalKind, Import, KnownCustom, Name, Operator, Parser,
    Payload, TypeRef,
};

use super::FlattenError;
use super::image::{self, Memories, Segment, SegmentKind};

/// The four kinds of core items a module can import, define and export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Sort {
    Func,
    Table,
    Memory,
    Global,
}

impl Sort {
    pub(super) fn of_kind(kind: ExternalKind) -> Result<Sort, FlattenError> {
        match kind {
            ExternalKind::Func => Ok(Sort::Func),
            ExternalKind::Table => Ok(Sort::Table),
            ExternalKind::Memory => Ok(Sort::Memory),
            ExternalKind::Global => Ok(Sort::Global),
            other => Err(FlattenError::unsupported(format!(
                "core item kind {other:?}"
            ))),
        }
    }

    pub(super) fn of_type(ty: &TypeRef) -> Result<Sort, FlattenError> {
        match ty {
            TypeRef::Func(_) => Ok(Sort::Func),
            TypeRef::Table(_) => Ok(Sort::Table),
            TypeRef::Memory(_) => Ok(Sort::Memory),
            TypeRef::Global(_) => Ok(Sort::Global),
            other => Err(FlattenError::unsupported(format!("import of {other:?}"))),
        }
    }

    pub(super) fn slot(self) -> usize {
        self as usize
    }

    pub(super) fn export_kind(self) -> ExportKind {
        match self {
            Sort::Func => ExportKind::Func,
            Sort::Table => ExportKind::Table,
            Sort::Memory => ExportKind::Memory,
            Sort::Global => ExportKind::Global,
        }
    }
}

/// What one module imports, defines and exports: enough to lay out the
/// merged index spaces before anything is encoded.
pub(super) struct ModuleInfo<'a> {
    bytes: &'a [u8],
    pub(super) imports: Vec<Import<'a>>,
    /// For each sort, the position in `imports` of its n-th import.
    imports_by_sort: [Vec<usize>; 4],
    defined: [u32; 4],
    types: u32,
    elements: u32,
    data: u32,
    exports: HashMap<&'a str, (Sort, u32)>,
    /// Initialisers of the immutable globals, by defined index: folding a
    /// segment offset may need any module's.
    constant_inits: Vec<(u32, wasmparser::ConstExpr<'a>)>,
}

impl<'a> ModuleInfo<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Self, FlattenError> {
        let mut info = ModuleInfo {
            bytes,
            imports: Vec::new(),
            imports_by_sort: Default::default(),
            defined: [0; 4],
            types: 0,
            elements: 0,
            data: 0,
            exports: HashMap::new(),
            constant_inits: Vec::new(),
        };
        for payload in Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        info.types += u32::try_from(group?.types().len()).unwrap_or(u32::MAX);
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import?;
                        let sort = Sort::of_type(&import.ty)?;
                        info.imports_by_sort[sort.slot()].push(info.imports.len());
                        info.imports.push(import);
                    }
                }
                Payload::FunctionSection(reader) => {
                    info.defined[Sort::Func.slot()] = reader.count()
                }
                Payload::TableSection(reader) => info.defined[Sort::Table.slot()] = reader.count(),
                Payload::MemorySection(reader) => {
                    info.defined[Sort::Memory.slot()] = reader.count()
                }
                Payload::GlobalSection(reader) => {
                    info.defined[Sort::Global.slot()] = reader.count();
                    for (i, global) in reader.into_iter().enumerate() {
                        let global = global?;
                        if !global.ty.mutable {
                            info.constant_inits.push((i as u32, global.init_expr));
                        }
                    }
                }
                Payload::ElementSection(reader) => info.elements = reader.count(),
                Payload::DataSection(reader) => info.data = reader.count(),
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export?;
                        let sort = Sort::of_kind(export.kind)?;
                        info.exports.insert(export.name, (sort, export.index));
                    }
                }
                Payload::StartSection { .. } => {
                    // Merging would have to run the start functions in the
                    // original order; pre-initialised components have none.
                    return Err(FlattenError::unsupported("a module with a start function"));
                }
                Payload::TagSection(_) => {
                    return Err(FlattenError::unsupported("a module with tags"));
                }
                _ => (),
            }
        }
        Ok(info)
    }

    pub(super) fn export(&self, name: &str) -> Option<(Sort, u32)> {
        self.exports.get(name).copied()
    }

    fn imported(&self, sort: Sort) -> u32 {
        u32::try_from(self.imports_by_sort[sort.slot()].len()).unwrap_or(u32::MAX)
    }

    /// The import behind a module-local index, or `None` for a definition.
    pub(super) fn import_at(&self, sort: Sort, index: u32) -> Option<usize> {
        self.imports_by_sort[sort.slot()]
            .get(index as usize)
            .copied()
    }

    pub(super) fn defined_index(&self, sort: Sort, index: u32) -> u32 {
        index - self.imported(sort)
    }
}

/// Where an imported or exported item ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The `index`-th definition of `sort` in merged module number `module`.
    Defined {
        module: usize,
        sort: Sort,
        index: u32,
    },
    /// The `n`-th external, which the merged module imports.
    External(usize),
}

/// An item the merged module imports: the first import that resolved to it
/// gives its type.
pub(super) struct External {
    pub(super) sort: Sort,
    pub(super) module: usize,
    pub(super) import: usize,
}

/// Everything `merge` needs: the modules in order, where each of their
/// imports goes, the externals, and what the merged module exports.
pub(super) struct Plan<'a> {
    pub(super) modules: Vec<ModuleInfo<'a>>,
    /// Per module, per import (in import order).
    pub(super) imports: Vec<Vec<Target>>,
    pub(super) externals: Vec<External>,
    pub(super) exports: Vec<(String, Sort, Target)>,
}

/// Index arithmetic for the merged module.
struct Layout {
    /// Per external: its index within its sort.
    external_index: Vec<u32>,
    /// Per module, per sort: index of its first definition.
    def_base: Vec<[u32; 4]>,
    type_base: Vec<u32>,
    elem_base: Vec<u32>,
    data_base: Vec<u32>,
    /// Per module, per sort: merged index of each import.
    import_map: Vec<[Vec<u32>; 4]>,
}

impl Layout {
    fn new(plan: &Plan<'_>) -> Layout {
        let mut per_sort = [0u32; 4];
        let external_index = plan
            .externals
            .iter()
            .map(|ext| {
                let n = per_sort[ext.sort.slot()];
                per_sort[ext.sort.slot()] += 1;
                n
            })
            .collect();
        let (mut types, mut elems, mut data) = (0, 0, 0);
        let mut layout = Layout {
            external_index,
            def_base: Vec::new(),
            type_base: Vec::new(),
            elem_base: Vec::new(),
            data_base: Vec::new(),
            import_map: Vec::new(),
        };
        for module in &plan.modules {
            layout.def_base.push(per_sort);
            for (slot, count) in per_sort.iter_mut().enumerate() {
                *count += module.defined[slot];
            }
            layout.type_base.push(types);
            layout.elem_base.push(elems);
            layout.data_base.push(data);
            types += module.types;
            elems += module.elements;
            data += module.data;
        }
        for (m, module) in plan.modules.iter().enumerate() {
            let mut map: [Vec<u32>; 4] = Default::default();
            for (slot, positions) in module.imports_by_sort.iter().enumerate() {
                map[slot] = positions
                    .iter()
                    .map(|&p| layout.target(plan.imports[m][p]))
                    .collect();
            }
            layout.import_map.push(map);
        }
        layout
    }

    fn target(&self, target: Target) -> u32 {
        match target {
            Target::Defined {
                module,
                sort,
                index,
            } => self.def_base[module][sort.slot()] + index,
            Target::External(n) => self.external_index[n],
        }
    }

    fn total_data(&self, plan: &Plan<'_>) -> u32 {
        self.data_base.last().copied().unwrap_or(0) + plan.modules.last().map_or(0, |m| m.data)
    }
}

/// Re-encodes one module's items into the merged index spaces.
struct Remap<'l> {
    layout: &'l Layout,
    module: usize,
}

impl Remap<'_> {
    fn index(&self, sort: Sort, index: u32) -> Result<u32, ReencodeError<String>> {
        let imports = &self.layout.import_map[self.module][sort.slot()];
        match imports.get(index as usize) {
            Some(&merged) => Ok(merged),
            None => Ok(self.layout.def_base[self.module][sort.slot()] + index
                - u32::try_from(imports.len())
                    .map_err(|e| ReencodeError::UserError(e.to_string()))?),
        }
    }
}

impl Reencode for Remap<'_> {
    type Error = String;

    fn function_index(&mut self, func: u32) -> Result<u32, ReencodeError<String>> {
        self.index(Sort::Func, func)
    }
    fn table_index(&mut self, table: u32) -> Result<u32, ReencodeError<String>> {
        self.index(Sort::Table, table)
    }
    fn memory_index(&mut self, memory: u32) -> Result<u32, ReencodeError<String>> {
        self.index(Sort::Memory, memory)
    }
    fn global_index(&mut self, global: u32) -> Result<u32, ReencodeError<String>> {
        self.index(Sort::Global, global)
    }
    fn type_index(&mut self, ty: u32) -> Result<u32, ReencodeError<String>> {
        Ok(self.layout.type_base[self.module] + ty)
    }
    fn element_index(&mut self, element: u32) -> Result<u32, ReencodeError<String>> {
        Ok(self.layout.elem_base[self.module] + element)
    }
    fn data_index(&mut self, data: u32) -> Result<u32, ReencodeError<String>> {
        Ok(self.layout.data_base[self.module] + data)
    }
}

/// A folded integer constant, typed as wasm types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    I32(i32),
    I64(i64),
}

/// Constant values of the merged module's immutable globals, as far as they
/// are plain integer constants; used to fold segment offsets.
struct Constants<'a> {
    inits: HashMap<u32, (usize, wasmparser::ConstExpr<'a>)>,
    values: HashMap<u32, Option<Value>>,
}

impl Constants<'_> {
    fn eval(
        &mut self,
        layout: &Layout,
        module: usize,
        expr: &wasmparser::ConstExpr<'_>,
    ) -> Option<Value> {
        let mut stack: Vec<Value> = Vec::new();
        let remap = Remap { layout, module };
        for op in expr.get_operators_reader() {
            let value = match op.ok()? {
                Operator::I32Const { value } => Value::I32(value),
                Operator::I64Const { value } => Value::I64(value),
                Operator::GlobalGet { global_index } => {
                    let merged = remap.index(Sort::Global, global_index).ok()?;
                    self.value(layout, merged)?
                }
                op @ (Operator::I32Add | Operator::I32Sub) => {
                    let (Value::I32(b), Value::I32(a)) = (stack.pop()?, stack.pop()?) else {
                        return None;
                    };
                    Value::I32(match op {
                        Operator::I32Add => a.wrapping_add(b),
                        _ => a.wrapping_sub(b),
                    })
                }
                op @ (Operator::I64Add | Operator::I64Sub) => {
                    let (Value::I64(b), Value::I64(a)) = (stack.pop()?, stack.pop()?) else {
                        return None;
                    };
                    Value::I64(match op {
                        Operator::I64Add => a.wrapping_add(b),
                        _ => a.wrapping_sub(b),
                    })
                }
                Operator::End => break,
                _ => return None,
            };
            stack.push(value);
        }
        match stack.as_slice() {
            [value] => Some(*value),
            _ => None,
        }
    }

    fn value(&mut self, layout: &Layout, global: u32) -> Option<Value> {
        if let Some(known) = self.values.get(&global) {
            return *known;
        }
        // Mark first so that a (malformed) cycle ends instead of recursing.
        self.values.insert(global, None);
        let (module, init) = self.inits.get(&global)?.clone();
        let value = self.eval(layout, module, &init);
        self.values.insert(global, value);
        value
    }
}

/// Does the expression read a global? Only those need folding; the rest
/// (float constants, `ref.func`...) are re-encoded as they are.
fn reads_global(expr: &wasmparser::ConstExpr<'_>) -> bool {
    expr.get_operators_reader()
        .into_iter()
        .any(|op| matches!(op, Ok(Operator::GlobalGet { .. })))
}

fn reencode_err(error: ReencodeError<String>) -> FlattenError {
    FlattenError::Encode(format!("{error:?}"))
}

/// The merged module, and the image its data segments were moved into
/// (see `image`), if they could be.
pub(super) struct Merged {
    pub(super) bytes: Vec<u8>,
    pub(super) image: Option<Vec<u8>>,
}

/// Build the merged module.
pub(super) fn merge(plan: &Plan<'_>) -> Result<Merged, FlattenError> {
    let layout = Layout::new(plan);

    let mut constants = Constants {
        inits: HashMap::new(),
        values: HashMap::new(),
    };
    for (m, module) in plan.modules.iter().enumerate() {
        for (i, init) in &module.constant_inits {
            let index = layout.def_base[m][Sort::Global.slot()] + i;
            constants.inits.insert(index, (m, init.clone()));
        }
    }

    let mut types = TypeSection::new();
    let mut imports = ImportSection::new();
    let mut functions = FunctionSection::new();
    let mut tables = TableSection::new();
    let mut memories = MemorySection::new();
    let mut globals = GlobalSection::new();
    let mut exports = ExportSection::new();
    let mut elements = ElementSection::new();
    let mut code = CodeSection::new();
    let mut segments = Vec::new();
    let mut memory_sizes = Memories {
        imported: 0,
        defined: Vec::new(),
    };
    let mut names = NameMap::new();

    for (n, ext) in plan.externals.iter().enumerate() {
        let mut remap = Remap {
            layout: &layout,
            module: ext.module,
        };
        let import = &plan.modules[ext.module].imports[ext.import];
        let ty: EntityType = remap.entity_type(import.ty).map_err(reencode_err)?;
        if matches!(ty, EntityType::Memory(_)) {
            memory_sizes.imported += 1;
        }
        imports.import("", &n.to_string(), ty);
    }

    for (m, module) in plan.modules.iter().enumerate() {
        let mut remap = Remap {
            layout: &layout,
            module: m,
        };
        let fold = |constants: &mut Constants<'_>, expr: &wasmparser::ConstExpr<'_>| {
            let mut remap = Remap {
                layout: &layout,
                module: m,
            };
            let folded = reads_global(expr)
                .then(|| constants.eval(&layout, m, expr))
                .flatten();
            match folded {
                Some(Value::I32(value)) => Ok(ConstExpr::i32_const(value)),
                Some(Value::I64(value)) => Ok(ConstExpr::i64_const(value)),
                None => remap.const_expr(expr.clone()).map_err(reencode_err),
            }
        };
        for payload in Parser::new(0).parse_all(module.bytes) {
            match payload? {
                Payload::TypeSection(reader) => {
                    remap
                        .parse_type_section(&mut types, reader)
                        .map_err(reencode_err)?;
                }
                Payload::FunctionSection(reader) => {
                    remap
                        .parse_function_section(&mut functions, reader)
                        .map_err(reencode_err)?;
                }
                Payload::TableSection(reader) => {
                    remap
                        .parse_table_section(&mut tables, reader)
                        .map_err(reencode_err)?;
                }
                Payload::MemorySection(reader) => {
                    for ty in reader.clone() {
                        memory_sizes.defined.push(Memories::initial_bytes(&ty?));
                    }
                    remap
                        .parse_memory_section(&mut memories, reader)
                        .map_err(reencode_err)?;
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        let global = global?;
                        let ty = remap.global_type(global.ty).map_err(reencode_err)?;
                        let init = if global.ty.mutable {
                            remap.const_expr(global.init_expr).map_err(reencode_err)?
                        } else {
                            fold(&mut constants, &global.init_expr)?
                        };
                        globals.global(ty, &init);
                    }
                }
                Payload::ElementSection(reader) => {
                    for element in reader {
                        let element = element?;
                        let items = match element.items {
                            ElementItems::Functions(funcs) => Elements::Functions(Cow::Owned(
                                funcs
                                    .into_iter()
                                    .map(|f| remap.function_index(f?).map_err(reencode_err))
                                    .collect::<Result<Vec<_>, FlattenError>>()?,
                            )),
                            ElementItems::Expressions(ty, exprs) => {
                                let ty = remap.ref_type(ty).map_err(reencode_err)?;
                                let exprs = exprs
                                    .into_iter()
                                    .map(|e| remap.const_expr(e?).map_err(reencode_err))
                                    .collect::<Result<Vec<_>, FlattenError>>()?;
                                Elements::Expressions(ty, Cow::Owned(exprs))
                            }
                        };
                        match element.kind {
                            ElementKind::Active {
                                table_index,
                                offset_expr,
                            } => {
                                let table = remap
                                    .table_index(table_index.unwrap_or(0))
                                    .map_err(reencode_err)?;
                                let offset = fold(&mut constants, &offset_expr)?;
                                elements.active(Some(table), &offset, items);
                            }
                            ElementKind::Passive => {
                                elements.passive(items);
                            }
                            ElementKind::Declared => {
                                elements.declared(items);
                            }
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    remap
                        .parse_function_body(&mut code, body)
                        .map_err(reencode_err)?;
                }
                Payload::DataSection(reader) => {
                    for segment in reader {
                        let segment = segment?;
                        match segment.kind {
                            DataKind::Active {
                                memory_index,
                                offset_expr,
                            } => {
                                let memory =
                                    remap.memory_index(memory_index).map_err(reencode_err)?;
                                let offset = fold(&mut constants, &offset_expr)?;
                                let at = match constants.eval(&layout, m, &offset_expr) {
                                    Some(Value::I32(at)) => Some(u64::from(at as u32)),
                                    Some(Value::I64(at)) => Some(at as u64),
                                    None => None,
                                };
                                segments.push(Segment {
                                    kind: SegmentKind::Active { memory, offset, at },
                                    data: segment.data,
                                });
                            }
                            DataKind::Passive => segments.push(Segment {
                                kind: SegmentKind::Passive,
                                data: segment.data,
                            }),
                        }
                    }
                }
                Payload::CustomSection(section) => {
                    if let KnownCustom::Name(reader) = section.as_known() {
                        merge_names(&mut remap, reader, &mut names)?;
                    }
                }
                _ => (),
            }
        }
    }

    for (name, sort, target) in &plan.exports {
        exports.export(name, sort.export_kind(), layout.target(*target));
    }

    let memory_image = image::extract(&segments, &memory_sizes);
    let mut data = DataSection::new();
    image::encode(&segments, memory_image.is_some(), &mut data);

    let mut merged = wasm_encoder::Module::new();
    merged
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&tables)
        .section(&memories)
        .section(&globals)
        .section(&exports)
        .section(&elements)
        .section(&DataCountSection {
            count: layout.total_data(plan),
        })
        .section(&code)
        .section(&data);
    let mut name_section = NameSection::new();
    name_section.functions(&names);
    merged.section(&name_section);
    Ok(Merged {
        bytes: merged.finish(),
        image: memory_image,
    })
}

/// Keep the function names (they make traps and profiles readable); names
/// of imported functions belong to the module that defines them.
fn merge_names(
    remap: &mut Remap<'_>,
    reader: wasmparser::NameSectionReader<'_>,
    names: &mut NameMap,
) -> Result<(), FlattenError> {
    let imported = remap.layout.import_map[remap.module][Sort::Func.slot()].len() as u32;
    for subsection in reader {
        let Name::Function(map) = subsection? else {
            continue;
        };
        for naming in map {
            let naming = naming?;
            if naming.index >= imported {
                let index = remap.function_index(naming.index).map_err(reencode_err)?;
                names.append(index, naming.name);
            }
        }
    }
    Ok(())
}
