-- Token index rows of resources that belong to one patient carry that patient's id, so that the commonest clinical
-- search, one patient's resources with a code (`Observation?patient=X&code=Y`), is one range of one index instead
-- of a probe of the code index for every resource of the patient.
--
-- Only the rows of the `code` parameter are keyed (one per coding, where keying every token row of an Observation wrote
-- four times as many scattered index entries on ingest), and only for types whose `patient` parameter holds at most one
-- Patient (its element has cardinality 0..1 or 1..1); both lists are kept in step with store::PATIENT_KEYED_TYPES.
ALTER TABLE idx_token ADD COLUMN patient_id TEXT;

-- The type test is written so that no index serves it: SQLite (no statistics) would otherwise walk every Patient
-- reference through (target_type, target_id) for each row instead of looking the row's own references up by res_pk.
UPDATE idx_token
SET patient_id = (SELECT MIN(x.target_id) FROM idx_reference x
                  WHERE x.res_pk = idx_token.res_pk AND x.param = 'patient' AND x.target_type || '' = 'Patient')
WHERE param = 'code'
  AND res_type IN ('AllergyIntolerance', 'CarePlan', 'Condition', 'Encounter', 'Goal', 'MedicationAdministration',
                   'MedicationStatement', 'Observation');

CREATE INDEX idx_token_patient ON idx_token (res_type, param, patient_id, code, system) WHERE patient_id IS NOT NULL;
