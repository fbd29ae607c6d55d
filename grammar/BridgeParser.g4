// BridgeParser.g4 - syntax of .bridge files (mappings, fragments, the schema).
// Only the syntax lives here; names, types and shapes are checked by Sema on
// our own AST (compiler/lib/Sema), never on ANTLR's parse tree.
parser grammar BridgeParser;
options { tokenVocab = BridgeLexer; }

file        : importDecl* topDecl* EOF ;
importDecl  : IMPORT STRING SEMI ;
topDecl     : bridgeDecl | schemaDecl | recipeDecl ;

bridgeDecl  : kind=(BRIDGE | FRAGMENT) name baseList? LBRACE bridgeItem* RBRACE ;
baseList    : COLON name (COMMA name)* ;
bridgeItem  : matchDecl | aliasDecl | letDecl | configBlock | exportBlock | weightsBlock ;
matchDecl   : MATCH name STRING SEMI ;
// Two spellings of one HF config field (transformers 5 renamed some):
// import reads the second when the first is absent; export writes the one
// the source config used.
// 'alias hf = hf.text_config;' reads every field absent at the top level
// from that section (a VLM keeps its language model's fields there).
aliasDecl   : ALIAS (hfPath | HF) ASSIGN hfPath SEMI ;
// 'let NAME = EXPR;': a name for an expression, usable wherever an expression
// is in this bridge or fragment (its sections, wherever the 'let' stands, and
// the lets after it). The AST builder puts a copy of EXPR at each use
// (ast::LetDecl), so later phases see the expression written out.
letDecl     : LET name ASSIGN expr SEMI ;

// 'when COND { ... }' (a guarded group, in config, export and weights): every
// rule inside also needs COND, as if 'COND && ' began its own 'when'; groups
// nest. The AST builder expands it (ast::GuardGroup).
configBlock : CONFIG LBRACE configItem* RBRACE ;
configItem  : configAssign | requireStmt | configGroup ;
configGroup : WHEN expr LBRACE configItem* RBRACE ;
// A condition the HF config must meet, or conversion stops with the message.
requireStmt : REQUIRE expr COMMA STRING SEMI ;
configAssign: OVERRIDE? name ASSIGN expr (WHEN expr)? SEMI ;
exportBlock : EXPORT LBRACE exportItem* RBRACE ;
exportItem  : exportAssign | exportGroup ;
exportGroup : WHEN expr LBRACE exportItem* RBRACE ;
exportAssign: OVERRIDE? hfPath ASSIGN expr (WHEN expr)? SEMI ;

// 'quantized fp8_block(scale = "_scale_inv") for "*_proj.weight", ...;' at
// the start of a weights section: every HF source of this bridge's rules
// whose name matches a glob is read through the scheme's dequantization op
// with the tensor named like it plus the suffix as its optional scale, as if
// 'dequant_fp8_block(X, X_scale_inv?)' were written (Sema expands it).
weightsBlock: WEIGHTS LBRACE quantizedDecl* weightItem* RBRACE ;
quantizedDecl: QUANTIZED name LPAREN name ASSIGN STRING RPAREN FOR STRING (COMMA STRING)* SEMI ;
weightItem  : forBlock | weightGroup | weightBlock | weightUse | tensorRule | ignoreRule | tieRule ;
// 'block NAME { ... }': weight rules whose names are relative, written once
// for a sub-tree that appears more than once (DeepSeek's MTP layer restates a
// decoder layer); 'use NAME at PREFIX from HF_PREFIX;' (after the block)
// stands for its rules with PREFIX before each Megatron name and HF_PREFIX
// before each HF name. The AST builder expands it (ast::WeightUse).
weightBlock : BLOCK name LBRACE weightItem* RBRACE ;
weightUse   : USE name AT_KW pattern FROM pattern SEMI ;
weightGroup : WHEN expr LBRACE weightItem* RBRACE ;
forBlock    : FOR name IN rangeSpec (WHERE expr)? LBRACE weightItem* RBRACE ;
rangeSpec   : expr DOTDOT expr   # rangeBounds
            | name               # rangeNamed
            ;
// 'a | b': alternative source layouts of one tensor (a quantized release and
// its unquantized save); the first whose HF tensors all exist is read.
tensorRule  : (OPTIONAL | OVERRIDE)* pattern LARROW source (PIPE source)* (COLON name)? (WHEN expr)? SEMI ;
ignoreRule  : IGNORE pattern (WHEN expr)? SEMI ;
tieRule     : TIE pattern ASSIGN pattern (WHEN expr)? SEMI ;

source      : AT? name LPAREN opArg (COMMA opArg)* RPAREN   # sourceOp
            | pattern QUESTION?                             # sourcePattern
            ;
opArg       : name ASSIGN expr   # opParam
            | source             # opSource
            ;

// A tensor name: dot-separated segments, each a name or number followed by
// captures glued to plain names ('weight{e}', '{q,k,v}_proj'). After a
// capture only a plain IDENT continues the segment, so a following soft
// keyword ('when', 'te', 'expert') ends the name. Blanks inside a name are
// rejected when the AST is built (BR0102).
// A trailing '.**' (pass-through rules and schema parameters): every tensor
// under the prefix, a module kept as HF has it (a VLM's vision tower).
pattern     : segment (DOT segment)* (DOT STAR STAR)? ;
segment     : segmentHead segmentMore* ;
// 'layers.0.1' lexes '0.1' as a FLOAT; in a name it is just text.
segmentHead : name | INT | FLOAT | bracePiece ;
segmentMore : bracePiece | IDENT | INT | FLOAT ;
bracePiece  : LBRACE altItem COMMA altItem (COMMA altItem)* RBRACE  # pieceAlternatives
            | LBRACE expr RBRACE                           # pieceCapture
            ;

altItem     : name | INT ;

// ---- recipes ----------------------------------------------------------------
// A training preset: settings (checked against runtime/include/bridge/
// RecipeKeys.def), inherited from presets named after ':' in order, the
// recipe's own last. A preset is not listed or emitted by itself.
recipeDecl  : kind=(RECIPE | PRESET) name baseList? LBRACE recipeSetting* RBRACE ;
recipeSetting : name ASSIGN expr SEMI ;

// ---- schema -----------------------------------------------------------------
schemaDecl  : SCHEMA name LBRACE schemaItem* RBRACE ;
schemaItem  : fieldDecl | rangeDecl | blockDecl | paramDecl | useDecl ;
fieldDecl   : FIELD name COLON typeRef (ASSIGN expr)? SEMI ;
typeRef     : name (LPAREN enumValue (COMMA enumValue)* RPAREN)? QUESTION? ;
enumValue   : name | STRING ;
rangeDecl   : RANGE name LPAREN name RPAREN ASSIGN expr SEMI ;
blockDecl   : BLOCK name LBRACE (paramDecl | useDecl)* RBRACE ;
useDecl     : USE name (AT_KW pattern)? (WHEN expr)? SEMI ;
// '[..]': the shape the checkpoint holds (pass-through parameters, '.**').
paramDecl   : PARAM pattern LBRACK (expr (COMMA expr)* | DOTDOT) RBRACK COLON name paramAttr* (WHEN expr)? SEMI ;
paramAttr   : TE pattern   # attrTE
            | DIST pattern # attrDist
            | LOCALDIST pattern # attrLocalDist
            | EXPERT       # attrExpert
            ;

// ---- expressions ---------------------------------------------------------------
expr        : cond=coalesceExpr (QUESTION thenE=expr COLON elseE=expr)? ;
coalesceExpr: orExpr (COALESCE orExpr)* ;
orExpr      : andExpr (OROR andExpr)* ;
andExpr     : cmpExpr (ANDAND cmpExpr)* ;
cmpExpr     : addExpr (op=(EQ | NE | LT | LE | GT | GE) addExpr)? ;
addExpr     : mulExpr (op+=(PLUS | MINUS) mulExpr)* ;
mulExpr     : unaryExpr (op+=(STAR | SLASH | SLASHSLASH | PERCENT) unaryExpr)* ;
unaryExpr   : op=(MINUS | BANG) unaryExpr | primary ;
primary     : INT                                     # litInt
            | FLOAT                                   # litFloat
            | STRING                                  # litString
            | KW_TRUE                                   # litTrue
            | KW_FALSE                                  # litFalse
            | KW_NULL                                   # litNull
            | hfPath                                  # refHF
            | name LPAREN (expr (COMMA expr)*)? RPAREN  # call
            | name                                    # refName
            | LBRACK (expr (COMMA expr)*)? RBRACK     # list
            | LPAREN expr RPAREN                      # paren
            ;
hfPath      : HF (DOT name)+ ;

name        : IDENT | IMPORT | BRIDGE | FRAGMENT | SCHEMA | MATCH | ALIAS | LET | REQUIRE | CONFIG | EXPORT
            | WEIGHTS | FOR | IN | WHERE | WHEN | OPTIONAL | OVERRIDE | IGNORE | TIE
            | FIELD | PARAM | BLOCK | USE | AT_KW | FROM | QUANTIZED | RANGE | TE | DIST | LOCALDIST | EXPERT | RECIPE | PRESET ;
