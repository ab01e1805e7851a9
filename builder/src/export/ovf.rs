//! OVA: a tar of an OVF 1.0 descriptor, its manifest and the disk, in that
//! order (the order OVF requires, so an importer can read the descriptor
//! before the disk streams past).
//!
//! The virtual hardware is what VMware and VirtualBox both import: an LSI
//! Logic SCSI controller with the disk, an e1000 network card, the vCPUs
//! and memory of `[vm]`, and UEFI firmware (VMware's `firmware` key;
//! VirtualBox reads no firmware from an OVF, see the README).

use std::fs::{self, File};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{fixed_header, io_at, safe_name, sha256_file, ExportError, Machine};

/// The part of the OVA's member names that comes from the appliance.
pub fn file_base(name: &str) -> String {
    safe_name(name)
}

/// The disk as the descriptor references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFile {
    /// Member name in the OVA.
    pub href: String,
    /// Bytes of the VMDK file.
    pub size: u64,
    /// The disk's virtual size in bytes.
    pub capacity: u64,
}

/// `text` with XML's five special characters escaped.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The OVF 1.0 descriptor. Within an `Item`, the `rasd:` elements are in
/// the alphabetical order the CIM schema sets (VMware's importer checks).
pub fn descriptor(m: &Machine, disk: &DiskFile) -> String {
    let name = xml(&m.name);
    let cpus = m.cpus;
    let mem = m.memory_mib;
    let href = xml(&disk.href);
    let (size, capacity) = (disk.size, disk.capacity);
    let mut product = format!("      <Product>{name}</Product>\n");
    if let Some(v) = &m.version {
        product.push_str(&format!("      <Version>{}</Version>\n", xml(v)));
        product.push_str(&format!("      <FullVersion>{}</FullVersion>\n", xml(v)));
    }
    let info = m
        .description
        .as_deref()
        .map_or_else(|| format!("The {name} appliance"), xml);
    let annotation = m.description.as_deref().map_or_else(String::new, |d| {
        format!(
            "    <AnnotationSection>\n      <Info>A description of the appliance</Info>\n      \
             <Annotation>{}</Annotation>\n    </AnnotationSection>\n",
            xml(d)
        )
    });
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US"
    xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{href}" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>The appliance's disk: a GPT with an EFI system partition and the root</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The network the appliance's card connects to</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A husk appliance</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="other5xLinux64Guest">
      <Info>The guest operating system</Info>
      <Description>Linux 64-bit (husk's portable kernel)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>{cpus} vCPUs, {mem} MiB of memory, a SCSI disk, a network card, UEFI</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{mem} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>E1000 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
    <ProductSection>
      <Info>{info}</Info>
{product}    </ProductSection>
{annotation}  </VirtualSystem>
</Envelope>
"#
    )
}

/// The manifest: `SHA256(member)= hex` for the descriptor and the disk.
pub fn manifest(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, digest)| format!("SHA256({name})= {digest}\n"))
        .collect()
}

/// Writes `out`: descriptor, manifest, then the VMDK, as a ustar archive
/// with owner, mode and times fixed.
pub(super) fn package(
    m: &Machine,
    capacity: u64,
    vmdk: &Path,
    base: &str,
    out: &Path,
) -> Result<(), ExportError> {
    let vmdk_name = format!("{base}-disk1.vmdk");
    let ovf_name = format!("{base}.ovf");
    let mf_name = format!("{base}.mf");
    let vmdk_size = fs::metadata(vmdk)
        .map_err(io_at("cannot stat", vmdk))?
        .len();
    let ovf = descriptor(
        m,
        &DiskFile {
            href: vmdk_name.clone(),
            size: vmdk_size,
            capacity,
        },
    );
    let ovf_digest = crate::oci::hex(&Sha256::digest(ovf.as_bytes()));
    let vmdk_digest = sha256_file(vmdk)?;
    let mf = manifest(&[(&ovf_name, &ovf_digest), (&vmdk_name, &vmdk_digest)]);

    let file = File::create(out).map_err(io_at("cannot create", out))?;
    let mut tar = tar::Builder::new(file);
    let header = |len: u64| fixed_header(tar::Header::new_ustar(), len);
    tar.append_data(&mut header(ovf.len() as u64), &ovf_name, ovf.as_bytes())
        .map_err(io_at("cannot write", out))?;
    tar.append_data(&mut header(mf.len() as u64), &mf_name, mf.as_bytes())
        .map_err(io_at("cannot write", out))?;
    let disk = File::open(vmdk).map_err(io_at("cannot open", vmdk))?;
    tar.append_data(&mut header(vmdk_size), &vmdk_name, disk)
        .map_err(io_at("cannot write", out))?;
    tar.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(io_at("cannot write", out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of the first element named `name` (any namespace) under
    /// `node`.
    fn text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
        node.descendants()
            .find(|n| n.tag_name().name() == name)
            .and_then(|n| n.text())
    }

    const OVF: &str = "http://schemas.dmtf.org/ovf/envelope/1";

    #[test]
    fn descriptor_holds_the_appliance_values() {
        struct Case {
            name: &'static str,
            version: Option<&'static str>,
            description: Option<&'static str>,
            cpus: u32,
            memory_mib: u64,
        }
        let cases = [
            Case {
                name: "web",
                version: Some("1.2.3"),
                description: Some("A web server"),
                cpus: 2,
                memory_mib: 512,
            },
            Case {
                name: "plain",
                version: None,
                description: None,
                cpus: 1,
                memory_mib: 128,
            },
            // What XML must escape survives the round trip.
            Case {
                name: "a&b<c>",
                version: Some("\"quoted\" 'v'"),
                description: Some("uses <tags> & \"quotes\""),
                cpus: 32,
                memory_mib: 65536,
            },
        ];
        for c in cases {
            let m = Machine {
                name: c.name.into(),
                version: c.version.map(Into::into),
                description: c.description.map(Into::into),
                cpus: c.cpus,
                memory_mib: c.memory_mib,
            };
            let disk = DiskFile {
                href: "web-disk1.vmdk".into(),
                size: 12345,
                capacity: 70 << 20,
            };
            let text_ovf = descriptor(&m, &disk);
            let doc = roxmltree::Document::parse(&text_ovf)
                .unwrap_or_else(|e| panic!("{}: not XML: {e}\n{text_ovf}", c.name));
            let root = doc.root_element();
            assert_eq!(root.tag_name().name(), "Envelope");
            assert_eq!(root.attribute((OVF, "version")), Some("1.0"));
            let children: Vec<_> = root
                .children()
                .filter(|n| n.is_element())
                .map(|n| n.tag_name().name())
                .collect();
            assert_eq!(
                children,
                [
                    "References",
                    "DiskSection",
                    "NetworkSection",
                    "VirtualSystem"
                ],
                "{}",
                c.name
            );
            let file = root
                .descendants()
                .find(|n| n.has_tag_name((OVF, "File")))
                .unwrap();
            assert_eq!(file.attribute((OVF, "href")), Some("web-disk1.vmdk"));
            assert_eq!(file.attribute((OVF, "size")), Some("12345"));
            let d = root
                .descendants()
                .find(|n| n.has_tag_name((OVF, "Disk")))
                .unwrap();
            assert_eq!(d.attribute((OVF, "capacity")), Some("73400320"));
            assert_eq!(d.attribute((OVF, "fileRef")), Some("file1"));

            let vs = root
                .children()
                .find(|n| n.has_tag_name((OVF, "VirtualSystem")))
                .unwrap();
            assert_eq!(vs.attribute((OVF, "id")), Some(c.name));
            assert_eq!(text(vs, "Name"), Some(c.name));
            for section in [
                "OperatingSystemSection",
                "VirtualHardwareSection",
                "ProductSection",
            ] {
                assert!(
                    vs.children().any(|n| n.has_tag_name((OVF, section))),
                    "{}: no {section}",
                    c.name
                );
            }
            // Items by resource type: 3 CPU, 4 memory, 6 SCSI, 17 disk,
            // 10 network card.
            let items: Vec<_> = vs
                .descendants()
                .filter(|n| n.tag_name().name() == "Item")
                .collect();
            let by_type = |t: &str| {
                items
                    .iter()
                    .find(|i| text(**i, "ResourceType") == Some(t))
                    .copied()
                    .unwrap_or_else(|| panic!("{}: no item of type {t}", c.name))
            };
            let cpus = c.cpus.to_string();
            let mem = c.memory_mib.to_string();
            assert_eq!(text(by_type("3"), "VirtualQuantity"), Some(cpus.as_str()));
            assert_eq!(text(by_type("4"), "VirtualQuantity"), Some(mem.as_str()));
            assert_eq!(text(by_type("4"), "AllocationUnits"), Some("byte * 2^20"));
            assert_eq!(text(by_type("6"), "ResourceSubType"), Some("lsilogic"));
            assert_eq!(
                text(by_type("17"), "HostResource"),
                Some("ovf:/disk/vmdisk1")
            );
            assert_eq!(text(by_type("17"), "Parent"), Some("3"));
            assert_eq!(text(by_type("10"), "ResourceSubType"), Some("E1000"));
            // rasd elements in each Item are in alphabetical order.
            for item in &items {
                let names: Vec<_> = item
                    .children()
                    .filter(|n| n.is_element())
                    .map(|n| n.tag_name().name())
                    .collect();
                let mut sorted = names.clone();
                sorted.sort_unstable();
                assert_eq!(names, sorted, "{}", c.name);
            }
            let firmware = vs
                .descendants()
                .find(|n| n.tag_name().name() == "Config")
                .unwrap();
            assert_eq!(
                firmware.attribute(("http://www.vmware.com/schema/ovf", "value")),
                Some("efi")
            );
            let product = vs
                .children()
                .find(|n| n.has_tag_name((OVF, "ProductSection")))
                .unwrap();
            assert_eq!(text(product, "Product"), Some(c.name));
            assert_eq!(text(product, "Version"), c.version);
            if let Some(desc) = c.description {
                assert_eq!(text(product, "Info"), Some(desc));
                assert_eq!(text(vs, "Annotation"), Some(desc));
            }
        }
    }

    #[test]
    fn manifest_lines() {
        assert_eq!(
            manifest(&[("a.ovf", "00ff"), ("a-disk1.vmdk", "ab")]),
            "SHA256(a.ovf)= 00ff\nSHA256(a-disk1.vmdk)= ab\n"
        );
    }
}
