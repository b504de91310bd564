"""A coffea NanoEvents schema for the generated files: PFNano's, restricted to what they hold.

The files follow CMS NanoAOD / PFNano naming (``Jet``, ``PFCands`` + the ``JetPFCands`` association
table, ``GenVisTau``, ``GenPart``, ``GenJet``), so coffea's own ``PFNanoAODSchema`` already gives
``events.Jet.constituents`` (through ``Jet_nConstituents`` and ``JetPFCands``), 4-vector behaviour
on jets, candidates and generator objects, and ``Jet.matched_gen`` (``Jet_genJetIdx``).  It also
warns once for every CMS cross-reference the files do not have (``Electron_jetIdx``,
``Muon_fsrPhotonIdx``, ... about 30).  :class:`HepmsNanoAODSchema` is the same schema with the
cross-references of these files only, plus the two tau <-> jet links of this generator
(``GenVisTau_jetIdx`` -> ``Jet``, ``Jet_genVisTauIdx`` -> ``GenVisTau``), so it loads without
warnings and still warns if one of *these* indices is missing.  Use it like any coffea schema::

    from coffea.nanoevents import NanoEventsFactory
    from hepms.generate.schema import HepmsNanoAODSchema

    events = NanoEventsFactory.from_root({"Htautau.root": "Events"},
                                         schemaclass=HepmsNanoAODSchema, mode="eager").events()
    events.Jet.constituents.pf.pt          # [events][jets][candidates]
    events.GenVisTau.parent.mass                # the full generator tau (GenPart)
    events.Jet[events.GenVisTau.jetIdx]         # the jet of each visible tau (jetIdx >= 0)

coffea is imported only by this module, which the rest of :mod:`hepms.generate` never imports.
"""
from __future__ import annotations

from coffea.nanoevents.schemas import PFNanoAODSchema

__all__ = ["HepmsNanoAODSchema", "CROSS_REFERENCES"]

#: Index branch -> target collection, for every index the generated files hold.
CROSS_REFERENCES: dict[str, str] = {
    "Jet_genJetIdx": "GenJet",
    "Jet_genVisTauIdx": "GenVisTau",
    "GenVisTau_genPartIdxMother": "GenPart",
    "GenVisTau_jetIdx": "Jet",
    "GenPart_genPartIdxMother": "GenPart",
    "JetPFCands_jetIdx": "Jet",
    "JetPFCands_pFCandsIdx": "PFCands",
    "PFCands_jetIdx": "Jet",
}


class HepmsNanoAODSchema(PFNanoAODSchema):
    """coffea's ``PFNanoAODSchema`` with the cross-references of ``hepms generate`` files only.

    Nothing else changes: collections, mixins (``Jet``, ``PFCand``, ``AssociatedPFCand``,
    ``GenVisTau``, ``GenParticle``) and behaviours are coffea's.
    """

    all_cross_references = dict(CROSS_REFERENCES)
    # PFNano's fixed-length nested indexers (Jet_muonIdx1/2, ...) do not exist in these files
    nested_items: dict[str, list[str]] = {}
