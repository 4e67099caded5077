//! What people read: a run's tables ([`tables`]), the anatomy of its wire bytes per
//! token ([`anatomy`]), its SVG plots ([`plots`]), the whole as one HTML page
//! ([`html`]), two runs compared ([`compare`]), repeated runs with their intervals ([`repeat`]), and the status of a lab that is up
//! ([`status`]). Pure: each renders what it is handed, so `lab report` re-renders a
//! saved `run.json` and tests render a checked-in one without root.

pub mod anatomy;
pub mod compare;
pub mod drops;
pub mod html;
pub mod load;
pub mod plots;
pub mod repeat;
pub mod serving;
pub mod status;
pub mod tables;
